"""The read engine: parse (query params -> ReadQuery) -> plan (stored cells per period) ->
execute (query: one tuple's buckets from Postgres history + Redis hot + late deltas;
breakdown / breakdown_series: ranked or uniques breakdowns; raw: the raw log) -> reply
(the JSON structs). Entry points are in engine.py; every function takes one ReadContext."""
