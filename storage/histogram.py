"""The histogram read API of the rollups: sparse log-scale histograms as parallel arrays and their percentiles.

The rollup tables (storage/rollup.py) keep, per bucket and latency, ``<metric>_bins smallint[]`` (bin numbers)
and ``<metric>_counts int[]`` (samples per bin). Bin 0 holds values below 1 ms (and negative ones), bin
``b >= 1`` holds [r^(b-1), r^b) with ``r = HIST_RATIO``. The dashboards merge the rows of a range with
``callscope_array_cat`` and read percentiles with ``callscope_hist_quantiles_sorted`` (or
``callscope_hist_quantiles`` / ``callscope_hist_quantile`` for unsorted input). Installed under stable names
(storage/routines.py STABLE_ROUTINES): the reader role may execute them (storage/reader.py).
"""

from __future__ import annotations

__all__ = ["HIST_RATIO", "HISTOGRAM_ROUTINES"]

#: Ratio between the bounds of a histogram bin: relative error of a percentile <= sqrt(HIST_RATIO) - 1.
HIST_RATIO = 1.04

_ARRAY_CAT = """
CREATE OR REPLACE AGGREGATE callscope_array_cat(anycompatiblearray) (SFUNC = array_cat, STYPE = anycompatiblearray)
"""


_HIST_BIN = f"""
CREATE OR REPLACE FUNCTION callscope_hist_bin(v float8) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN v IS NULL THEN NULL
              WHEN v < 1 THEN 0
              ELSE least(1 + floor(ln(v) / ln({HIST_RATIO})), 32000) END::smallint
$$"""

_HIST_MID = f"""
CREATE OR REPLACE FUNCTION callscope_hist_mid(b smallint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN b <= 0 THEN 0.5 ELSE power({HIST_RATIO}::float8, b - 0.5) END
$$"""

# Percentiles of a histogram given as parallel arrays (any order, bins may repeat: they are added up).
# Rank and interpolation follow percentile_cont; lo / hi (the exact min / max) clamp the result.
_HIST_QUANTILES = """
CREATE OR REPLACE FUNCTION callscope_hist_quantiles(bins smallint[], counts int[], qs float8[],
                                                    lo float8 DEFAULT NULL, hi float8 DEFAULT NULL)
RETURNS float8[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  sb smallint[];
  sn bigint[];
BEGIN
  -- merge repeated bins and sort them, then walk once (callscope_hist_quantiles_sorted)
  SELECT array_agg(h.b ORDER BY h.b), array_agg(h.n ORDER BY h.b)
    INTO sb, sn
  FROM (SELECT u.b, sum(u.n)::bigint AS n FROM unnest(bins, counts) AS u(b, n)
        WHERE u.b IS NOT NULL AND u.n > 0 GROUP BY u.b) h;
  RETURN callscope_hist_quantiles_sorted(sb, sn, qs, lo, hi);
END
$$"""

# Percentiles of a histogram whose bins are unique and ascending (as the dashboards' queries build it): one walk
# per percentile, from the nearer end (a p95 passes the few bins above it, not the many below).
_HIST_QUANTILES_SORTED = """
CREATE OR REPLACE FUNCTION callscope_hist_quantiles_sorted(bins smallint[], counts bigint[], qs float8[],
                                                           lo float8 DEFAULT NULL, hi float8 DEFAULT NULL)
RETURNS float8[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  len int := coalesce(cardinality(bins), 0);
  total bigint := 0;
  result float8[] := '{}';
  c bigint;
  q float8;
  rk float8;
  j bigint;
  k bigint;
  i int;
  cum bigint;
  v0 float8;
  v1 float8;
  v float8;
BEGIN
  IF len > 0 THEN
    FOREACH c IN ARRAY counts LOOP
      total := total + c;
    END LOOP;
  END IF;
  FOREACH q IN ARRAY qs LOOP
    IF total = 0 OR q IS NULL THEN
      result := result || NULL::float8;
      CONTINUE;
    END IF;
    rk := least(greatest(q, 0), 1) * (total - 1);
    j := floor(rk)::bigint;
    k := least(j + 1, total - 1);
    IF j < total / 2 THEN
      -- upwards: cum = ranks up to the end of bin i (bin i holds ranks [cum - counts[i], cum))
      i := 1;
      cum := counts[1];
      WHILE cum <= j LOOP
        i := i + 1;
        cum := cum + counts[i];
      END LOOP;
      v0 := callscope_hist_mid(bins[i]);
      WHILE cum <= k LOOP
        i := i + 1;
        cum := cum + counts[i];
      END LOOP;
      v1 := callscope_hist_mid(bins[i]);
    ELSE
      -- downwards, the same bins found from the top
      i := len;
      cum := total;
      WHILE cum - counts[i] > k LOOP
        cum := cum - counts[i];
        i := i - 1;
      END LOOP;
      v1 := callscope_hist_mid(bins[i]);
      WHILE cum - counts[i] > j LOOP
        cum := cum - counts[i];
        i := i - 1;
      END LOOP;
      v0 := callscope_hist_mid(bins[i]);
    END IF;
    v := v0 + (rk - j) * (v1 - v0);
    IF lo IS NOT NULL AND v < lo THEN v := lo; END IF;
    IF hi IS NOT NULL AND v > hi THEN v := hi; END IF;
    result := result || v;
  END LOOP;
  RETURN result;
END
$$"""

_HIST_QUANTILE = """
CREATE OR REPLACE FUNCTION callscope_hist_quantile(bins smallint[], counts int[], q float8,
                                                   lo float8 DEFAULT NULL, hi float8 DEFAULT NULL)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT (callscope_hist_quantiles(bins, counts, ARRAY[q], lo, hi))[1]
$$"""


#: Installed by ``storage.migrate.install_routines`` with the refresh routines (storage.rollup.ROLLUP_ROUTINES).
HISTOGRAM_ROUTINES = (_ARRAY_CAT, _HIST_BIN, _HIST_MID, _HIST_QUANTILES_SORTED, _HIST_QUANTILES, _HIST_QUANTILE)
