-- Derive, 5 of 6 — cost: the call's cost columns, from the row calls.sql just wrote and its spans' facts. The
-- producer's reported total wins (call.cost, design §7); else the sum of the spans' priced usage (collector/cost.py
-- prices each span from the price table passed to it) and the ended call's duration × its direction's telephony
-- rate (telephony_rates, filled from the same price table at collector startup; a zero rate means no cost).

-- name: price_calls
-- Written only where a cost column changed (a call derived again without new data writes nothing).
WITH sp AS (
    SELECT call_id,
        (array_agg(facts->>'currency' ORDER BY end_time DESC) FILTER (WHERE facts ? 'currency'))[1] AS currency,
        (array_agg(callscope_float(facts->>'cost_total') ORDER BY end_time DESC) FILTER (WHERE facts ? 'cost_total'))[1] AS cost_reported,
        sum(callscope_float(facts->>'cost_stt') ORDER BY trace_id, span_id) AS cost_stt,
        sum(callscope_float(facts->>'cost_llm') ORDER BY trace_id, span_id) AS cost_llm,
        sum(callscope_float(facts->>'cost_tts') ORDER BY trace_id, span_id) AS cost_tts
    FROM derive_spans GROUP BY call_id
), priced AS (
    SELECT c.call_id, sp.cost_reported, sp.cost_stt, sp.cost_llm, sp.cost_tts, sp.currency,
        CASE WHEN c.ended_at IS NOT NULL THEN
             extract(epoch FROM c.ended_at - c.started_at) / 60.0 * nullif(r.per_minute, 0)
        END AS cost_phone
    FROM calls c
    LEFT JOIN sp ON sp.call_id = c.call_id
    LEFT JOIN telephony_rates r ON r.direction = c.direction
    WHERE c.call_id = ANY($1::text[]) AND c.tenant IS NOT DISTINCT FROM $2
), costs AS (
    SELECT call_id,
        coalesce(cost_reported,
                 CASE WHEN num_nonnulls(cost_stt, cost_llm, cost_tts, cost_phone) > 0 THEN
                      coalesce(cost_stt, 0) + coalesce(cost_llm, 0) + coalesce(cost_tts, 0) + coalesce(cost_phone, 0)
                 END) AS cost_total,
        cost_stt, cost_llm, cost_tts, cost_phone AS cost_telephony,
        CASE WHEN currency IS NOT NULL THEN currency
             WHEN num_nonnulls(cost_reported, cost_stt, cost_llm, cost_tts, cost_phone) > 0 THEN 'USD' END
            AS currency
    FROM priced
)
UPDATE calls c SET cost_total = x.cost_total, cost_stt = x.cost_stt, cost_llm = x.cost_llm, cost_tts = x.cost_tts,
       cost_telephony = x.cost_telephony, currency = x.currency, updated_at = now(), stale = false
FROM costs x
WHERE c.call_id = ANY($1::text[]) AND c.tenant IS NOT DISTINCT FROM $2 AND c.call_id = x.call_id
  AND (c.cost_total, c.cost_stt, c.cost_llm, c.cost_tts, c.cost_telephony, c.currency)
      IS DISTINCT FROM (x.cost_total, x.cost_stt, x.cost_llm, x.cost_tts, x.cost_telephony, x.currency);
