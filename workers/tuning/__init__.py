"""Self-optimisation: Optuna tunes the retriever's HNSW graph and each language's sampling.

- `storage.py`   where Optuna keeps its studies (PostgreSQL schema, or a journal)
- `lock.py`      the Redis lock that keeps two retriever studies from overlapping
- `evalset.py`   the evaluation set from served queries, exact ground truth
- `hnsw_study.py` the study itself over arrays (used by the task and by bench/tuning.py)
- `retriever_tuner.py` one tuning run against SQL: measure, study, promote, record
- `generation.py` `sampling_for()` for the agent and the teller of generation trials
"""
