"""FeedbackAwareRetriever: a local hnswlib replica of the SQL embeddings, re-ranked by
what users thought of each item.

Lifecycle of a replica (one per worker process, no shared disk needed):
1. `open()`: embed any item that has no embedding yet, then load the index file from the
   data dir if it verifies (checksum) and matches SQL (model, dim, HNSW graph params,
   and every label's item); otherwise rebuild it from SQL. Save it.
2. `sync()` (before every search): add rows with `seq` above the high-water mark, and
   re-ask for *gaps* — seqs below the mark not seen yet. On PostgreSQL a row can commit
   after rows with higher seqs, so "everything above the mark" alone would skip it
   forever; gaps are watched for `GAP_TTL_S`, and a full reconcile against the SQL
   catalog every `RECONCILE_INTERVAL_S` catches anything else (deleted rows included).
3. Every replica converges on the same content because SQL is the only input.

Hot swap of tuned HNSW parameters: every `RETRIEVAL_CONFIG_CHECK_S` a sync reads the
newest active `retriever_configs` row (one indexed SELECT). A new `ef` applies at once;
a new graph (M, ef_construction) is built in a background thread from SQL (or loaded,
if another replica on this machine already saved that version) while searches keep
using the old index; the new one is saved, then swapped in under the lock in one
assignment and caught up. Index files are versioned by config (`<model>.v<N>.clidx`,
written to a temporary name and renamed), so a replica that starts mid-swap loads the
version in force and older versions are deleted once the new one is saved.

Served queries: each searched vector is kept in memory and written to `served_queries`
in batches (at most every `QUERY_FLUSH_S`), the tuner's evaluation set.

Ranking: over-fetch nearest neighbours, read feedback and usage from SQL, sort by
`ranking.combined_score`. A rating therefore changes the very next search.

Workspaces: every label carries its item's workspace, and a search for a workspace
filters inside the index (its items and the global ones), never after the fact, so
another workspace's items can neither leak into results nor push the k best out.
`workspace=None` searches everything: only for callers that are not serving a user
(tests, the tuner's evaluation).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from app.core import metrics
from app.core.config import Settings, get_settings
from app.core.history import record_usage
from app.core.models import RetrieverConfig
from workers.retrieval import embedding_store as store
from workers.retrieval.embedder import Embedder, get_embedder
from workers.retrieval.index_file import IndexFileError, IndexHeader, load_index, save_index
from workers.retrieval.items import ItemDetails, load_details
from workers.retrieval.ranking import RankingWeights, combined_score, effective_feedback
from workers.retrieval.vector_index import HnswParams, LabelInfo, VectorIndex

log = logging.getLogger(__name__)

GAP_TTL_S = 600.0  # a transaction open this long is not going to commit an embedding
GAP_WINDOW = 1000  # after a build or reconcile, absent seqs this close to the top are watched
MAX_GAPS = 10_000
PENDING_SCAN_INTERVAL_S = 10.0
RECONCILE_INTERVAL_S = 300.0
SAVE_INTERVAL_S = 300.0
PENDING_BATCH = 256
OVERFETCH, MIN_FETCH = 4, 64
SNIPPET_CHARS = 1200
QUERY_FLUSH_S, QUERY_FLUSH_MAX = 5.0, 64


@dataclass(frozen=True)
class SearchHit:
    item_type: str
    item_id: str
    language: str
    title: str | None
    snippet: str
    similarity: float
    feedback_score: float  # the mean rating (neutral prior when unrated), execution folded in
    feedback_count: int
    usage_count: int
    combined: float
    details: ItemDetails

    def to_json(self) -> dict[str, Any]:
        return {
            "item_type": self.item_type,
            "item_id": self.item_id,
            "language": self.language,
            "title": self.title,
            "snippet": self.snippet,
            "similarity": round(self.similarity, 6),
            "feedback_score": round(self.feedback_score, 6),
            "feedback_count": self.feedback_count,
            "usage_count": self.usage_count,
            "combined": round(self.combined, 6),
        }


def default_index_path(settings: Settings) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", settings.embedding_model).strip("_") or "model"
    return Path(settings.data_dir) / "retrieval" / f"{slug}.clidx"


def versioned_path(base: Path, version: int) -> Path:
    """The index file of one config version: `<stem>.v<N><suffix>` beside `base`."""
    return base.with_name(f"{base.stem}.v{version}{base.suffix}")


def configured(session: Session) -> tuple[int, HnswParams]:
    """(version, HNSW parameters) of the newest active tuner result; (0, defaults) if none."""
    row = session.execute(
        select(RetrieverConfig.id, RetrieverConfig.params)
        .where(RetrieverConfig.active.is_(True))
        .order_by(RetrieverConfig.created_at.desc(), RetrieverConfig.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return 0, HnswParams()
    return int(row[0]), HnswParams.from_dict(row[1] if isinstance(row[1], dict) else None)


def configured_params(session: Session) -> HnswParams:
    """HNSW parameters of the newest active tuner result, or the defaults."""
    return configured(session)[1]


class FeedbackAwareRetriever:
    def __init__(
        self,
        *,
        engine: Engine,
        settings: Settings | None = None,
        embedder: Embedder | None = None,
        index_path: Path | None = None,
        params: HnswParams | None = None,
    ) -> None:
        settings = settings or get_settings()
        self.model = settings.embedding_model
        self.weights = RankingWeights.from_settings(settings)
        self.base_path = index_path or default_index_path(settings)
        self.version = 0  # the retriever_configs row in force (0: defaults or fixed params)
        self._config_check_s = settings.retrieval_config_check_s
        self._last_config_check = 0.0
        self._record_queries = settings.tune_record_queries
        self._keep_queries = max(2 * settings.tune_eval_queries, 1)
        self._served: list[tuple[np.ndarray, str | None]] = []
        self._served_lock = threading.Lock()
        self._last_query_flush = time.monotonic()
        self.embedder = embedder or get_embedder(self.model)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._fixed_params = params  # None: follow retriever_configs
        self._lock = threading.RLock()
        self._pending_lock = threading.Lock()
        self._index: VectorIndex | None = None
        self._dim = 0
        self._hwm = 0
        self._gaps: dict[int, float] = {}  # seq -> monotonic time first missed
        self._unsaved = 0
        self._last_pending_scan = self._last_reconcile = self._last_save = 0.0
        self._rebuilding: tuple[int, HnswParams] | None = None  # the version being built
        self.swaps = 0  # completed hot swaps (tests, metrics)
        self.opened_how: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def open(self) -> str:
        """Load or build the replica; returns "loaded", "built" or "rebuilt (<why>)"."""
        with self._lock:
            if self.opened_how is not None:
                return self.opened_how
            self._dim = self.embedder.dim
            self.embed_pending()
            self.version, params = self._config()
            self._last_config_check = time.monotonic()
            try:
                self._load(params)
                how = "loaded"
            except IndexFileError as exc:
                how = "built" if str(exc) == "no index file" else f"rebuilt ({exc})"
                log.info("retrieval index %s: %s", self.index_path, how)
                self._build(params)
            self.opened_how = how
            if how != "loaded" or self._unsaved:
                self.save()
            self._last_reconcile = time.monotonic()
            return how

    @property
    def index_path(self) -> Path:
        """The file of the version in force."""
        return versioned_path(self.base_path, self.version)

    def _config(self) -> tuple[int, HnswParams]:
        if self._fixed_params is not None:
            return 0, self._fixed_params
        with self._sessions() as session:
            return configured(session)

    def _params(self) -> HnswParams:
        return self._config()[1]

    def _load(self, params: HnswParams) -> None:
        index, hwm, gaps, sql_catalog = self._read_file(self.index_path, params)
        self._index, self._hwm, self._gaps = index, hwm, gaps
        self._reconcile(sql_catalog)

    def _read_file(
        self, path: Path, params: HnswParams
    ) -> tuple[VectorIndex, int, dict[int, float], dict[int, LabelInfo]]:
        """A saved index that verifies and matches SQL (touches no state)."""
        index, header = load_index(path)
        if header.model != self.model or header.dim != self._dim:
            raise IndexFileError(f"stale: built for {header.model} ({header.dim} dims)")
        if not header.params.same_graph(params):
            raise IndexFileError(f"stale: built with {header.params.to_dict()}")
        with self._sessions() as session:
            sql_catalog = store.catalog(session, self.model, self._dim)
            top = store.max_seq(session)
        if header.hwm > top:
            raise IndexFileError("stale: ahead of SQL (another database?)")
        if any(sql_catalog.get(seq, info) != info for seq, info in header.labels.items()):
            raise IndexFileError("stale: labels do not match SQL")
        gone = sum(seq not in sql_catalog for seq in header.labels)
        if gone and gone * 2 >= len(header.labels):  # rows are rarely deleted: a foreign file
            raise IndexFileError("stale: most labels are not in SQL")
        if params.ef != index.params.ef:
            index.set_ef(params.ef)
        now = time.monotonic()
        return index, header.hwm, dict.fromkeys(header.gaps, now), sql_catalog

    def _build(self, params: HnswParams) -> None:
        self._index, self._hwm, self._gaps = self._build_index(params)
        self._unsaved += 1

    def _build_index(self, params: HnswParams) -> tuple[VectorIndex, int, dict[int, float]]:
        """A fresh index of every SQL row, its high-water mark and gaps (touches no state)."""
        with self._sessions() as session:
            size = len(store.catalog(session, self.model, self._dim))
            index = VectorIndex(self._dim, params, capacity=size + 1024)
            for rows in store.iter_all_rows(session, self.model, self._dim):
                index.add(
                    [r.seq for r in rows],
                    np.stack([r.vector for r in rows]),
                    [r.info for r in rows],
                )
        hwm = max(index.labels, default=0)
        now = time.monotonic()
        gaps = {
            seq: now for seq in range(max(hwm - GAP_WINDOW, 0) + 1, hwm) if seq not in index.labels
        }
        return index, hwm, gaps

    def _rebuild_in_background(self, params: HnswParams, version: int | None = None) -> None:
        """Swap in an index built with new graph params; searches go on meanwhile.

        Called with the lock held; the build runs in a thread without it. The new index
        is saved under its version's file before it becomes visible, so the swap itself
        is one assignment plus a catch-up on rows committed during the build.
        """
        version = self.version if version is None else version
        if self._rebuilding is not None:
            return  # one build at a time; a later config is noticed at the next check
        self._rebuilding = (version, params)
        path = versioned_path(self.base_path, version)

        def work() -> None:
            try:
                try:  # another replica on this machine may have saved this version already
                    index, hwm, gaps, _ = self._read_file(path, params)
                    how = "loaded"
                except IndexFileError:
                    index, hwm, gaps = self._build_index(params)
                    self._save_to(path, index, hwm, gaps)
                    how = "built"
                with self._lock:
                    self._index, self._hwm, self._gaps = index, hwm, gaps
                    self.version = version
                    self._unsaved += self._catch_up()
                    self.swaps += 1
                log.info("retrieval index v%d (%s) %s and swapped in", version,
                         params.to_dict(), how)  # fmt: skip
                self._prune_versions(version)
            except Exception:
                log.exception("rebuilding the retrieval index failed")
            finally:
                self._rebuilding = None

        threading.Thread(target=work, name="retrieval-rebuild", daemon=True).start()

    def _prune_versions(self, keep: int) -> None:
        """Delete index files of older versions (a replica starting now wants `keep`)."""
        pattern = f"{self.base_path.stem}.v*{self.base_path.suffix}"
        for path in self.base_path.parent.glob(pattern):
            number = path.name[len(self.base_path.stem) + 2 : -len(self.base_path.suffix) or None]
            if number.isdigit() and int(number) < keep:
                path.unlink(missing_ok=True)

    @property
    def rebuilding(self) -> bool:
        return self._rebuilding is not None

    def rebuild(self, params: HnswParams | None = None) -> None:
        """Rebuild from SQL now (e.g. after the tuner chose new HNSW parameters)."""
        with self._lock:
            self._dim = self._dim or self.embedder.dim
            if params is None:
                self.version, params = self._config()
            self._build(params)
            self.opened_how = self.opened_how or "built"
            self.save()

    def save(self) -> Path | None:
        """Write the replica to the data dir; a failure only costs a rebuild at next start."""
        with self._lock:
            if self._index is None:
                return None
            if not self._save_to(self.index_path, self._index, self._hwm, self._gaps):
                return None
            self._unsaved = 0
            self._last_save = time.monotonic()
            return self.index_path

    def _save_to(self, path: Path, index: VectorIndex, hwm: int, gaps: dict[int, float]) -> bool:
        header = IndexHeader(
            self.model, self._dim, index.params, hwm, dict(index.labels), sorted(gaps)
        )
        try:
            save_index(path, index, header)
        except OSError as exc:
            log.warning("could not save the retrieval index to %s: %s", path, exc)
            return False
        return True

    def close(self) -> None:
        self.flush_served_queries()
        with self._lock:
            if self._unsaved:
                self.save()

    # --- keeping up with SQL -----------------------------------------------------------------
    def sync(self, *, force: bool = False) -> int:
        """Bring the replica up to date with SQL; returns how many vectors were added."""
        self.open()
        now = time.monotonic()
        if force or now - self._last_pending_scan >= PENDING_SCAN_INTERVAL_S:
            self.embed_pending()
        with self._lock:
            assert self._index is not None
            if force or now - self._last_config_check >= self._config_check_s:
                self._follow_config()
            if force or now - self._last_reconcile >= RECONCILE_INTERVAL_S:
                added = self._reconcile()
            else:
                added = self._catch_up()
            self._unsaved += added
            if self._unsaved and time.monotonic() - self._last_save >= SAVE_INTERVAL_S:
                self.save()
            return added

    def _catch_up(self) -> int:
        assert self._index is not None
        now = time.monotonic()
        self._gaps = {seq: t for seq, t in self._gaps.items() if now - t < GAP_TTL_S}
        with self._sessions() as session:
            rows = store.rows_after(session, self.model, self._dim, self._hwm, self._gaps)
        added = self._add_rows(rows)
        seen = {row.seq for row in rows}
        for seq in seen:
            self._gaps.pop(seq, None)
        top = max(seen, default=self._hwm)
        if top > self._hwm:
            self._watch_gaps(seen, self._hwm, top)
            self._hwm = top
        return added

    def _reconcile(self, sql_catalog: dict[int, LabelInfo] | None = None) -> int:
        """Make the replica hold exactly the SQL catalog (adds, replaces and removes)."""
        assert self._index is not None
        if sql_catalog is None:
            with self._sessions() as session:
                sql_catalog = store.catalog(session, self.model, self._dim)
        index = self._index
        gone = [seq for seq in index.labels if seq not in sql_catalog]
        index.remove(gone)
        wrong = [seq for seq, info in sql_catalog.items() if index.labels.get(seq) != info]
        with self._sessions() as session:
            rows = store.rows_by_seq(session, self.model, self._dim, wrong)
        added = self._add_rows(rows)
        top = max(sql_catalog, default=0)
        self._gaps = {seq: t for seq, t in self._gaps.items() if seq not in sql_catalog}
        self._watch_gaps(set(sql_catalog), max(top - GAP_WINDOW, 0), top)
        self._hwm = max(self._hwm, top)
        self._last_reconcile = time.monotonic()
        return added + len(gone)

    def _follow_config(self) -> None:
        """Apply a newly promoted config: ef at once, a new graph by background rebuild."""
        assert self._index is not None
        self._last_config_check = time.monotonic()
        version, params = self._config()
        if version == self.version and params.same_graph(self._index.params):
            if params.ef != self._index.params.ef:
                self._index.set_ef(params.ef)
            return
        if params.same_graph(self._index.params):
            self._index.set_ef(params.ef)
            self.version = version
            self._unsaved += 1  # saved under the new version's name at the next save
            log.info("retrieval config v%d: ef=%d", version, params.ef)
            return
        if self._rebuilding is None:
            log.info("retrieval config v%d: new graph %s, rebuilding", version, params.to_dict())
        self._rebuild_in_background(params, version)

    def _add_rows(self, rows: Sequence[store.EmbeddingRow]) -> int:
        assert self._index is not None
        fresh = [row for row in rows if self._index.labels.get(row.seq) != row.info]
        if fresh:
            self._index.add(
                [r.seq for r in fresh], np.stack([r.vector for r in fresh]), [r.info for r in fresh]
            )
        return len(fresh)

    def _watch_gaps(self, present: set[int], low: int, high: int) -> None:
        """Remember seqs in (low, high) not present: they may still commit."""
        assert self._index is not None
        if high - low > MAX_GAPS:  # a jump in the sequence; the periodic reconcile covers it
            low = high - MAX_GAPS
        now = time.monotonic()
        held = self._index.labels
        for seq in range(low + 1, high):
            if seq not in present and seq not in held:
                self._gaps.setdefault(seq, now)
        if len(self._gaps) > MAX_GAPS:
            self._gaps = dict(sorted(self._gaps.items())[-MAX_GAPS:])

    def embed_new(self) -> int:
        """`embed_pending` if anything may be pending (cheap to call before every query)."""
        with self._sessions() as session:
            if not store.may_have_pending(session, self.model):
                return 0
        return self.embed_pending()

    def embed_pending(self) -> int:
        """Embed items that have no embedding row yet (e.g. knowledge added via the API)."""
        if not self._pending_lock.acquire(blocking=False):
            return 0  # another thread is at it
        try:
            total = 0
            while True:
                with self._sessions() as session:
                    items = store.pending_items(session, self.model, PENDING_BATCH)
                if not items:
                    break
                vectors = self.embedder.encode([item.text for item in items])
                with self._sessions.begin() as session:
                    store.store_vectors(session, self.model, items, vectors)
                total += len(items)
                if len(items) < PENDING_BATCH:
                    break
            self._last_pending_scan = time.monotonic()
            return total
        finally:
            self._pending_lock.release()

    def index_generation(self, generation_id: str) -> bool:
        """Embed one stored generation and add it; False if there is no such generation."""
        with self._sessions() as session:
            item = store.generation_item(session, generation_id)
        if item is None:
            return False
        vectors = self.embedder.encode([item.text], batch_size=1)
        with self._sessions.begin() as session:
            store.store_vectors(session, self.model, [item], vectors)
        with self._lock:
            if self._index is not None:
                self._unsaved += self._catch_up()
        return True

    # --- search --------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        *,
        language: str | None = None,
        k: int = 5,
        item_types: Iterable[str] | None = None,
        workspace: str | None = None,
    ) -> list[SearchHit]:
        """The k best items for a query: similar, well rated, often used."""
        return self.search_vector(
            self.embedder.encode_one(query),
            language=language,
            k=k,
            item_types=item_types,
            workspace=workspace,
        )

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        language: str | None = None,
        k: int = 5,
        item_types: Iterable[str] | None = None,
        workspace: str | None = None,
    ) -> list[SearchHit]:
        """Like `search`, for a query already embedded."""
        started = time.perf_counter()
        self.sync()
        with self._lock:
            assert self._index is not None
            nearest = self._index.search(
                vector,
                max(k * OVERFETCH, MIN_FETCH),
                language=language,
                item_types=item_types,
                workspace=workspace,
            )
            infos = {seq: self._index.labels[seq] for seq, _ in nearest}
        with self._sessions() as session:
            details = load_details(session, {(i.item_type, i.item_id) for i in infos.values()})
        best: dict[tuple[str, str], SearchHit] = {}
        for seq, similarity in nearest:
            info = infos[seq]
            item = details.get((info.item_type, info.item_id))
            if item is None:  # deleted from SQL since it was indexed
                continue
            hit = self._hit(item, similarity)
            key = (item.item_type, item.item_id)
            if key not in best or best[key].combined < hit.combined:
                best[key] = hit
        ranked = sorted(best.values(), key=lambda h: (-h.combined, -h.similarity, h.item_id))
        metrics.observe_retriever_query(time.perf_counter() - started)
        self._remember_query(vector, language)
        return ranked[:k]

    def _remember_query(self, vector: np.ndarray, language: str | None) -> None:
        if not self._record_queries:
            return
        with self._served_lock:
            self._served.append((np.asarray(vector, dtype=np.float32).copy(), language))
            due = (
                len(self._served) >= QUERY_FLUSH_MAX
                or time.monotonic() - self._last_query_flush >= QUERY_FLUSH_S
            )
        if due:
            self.flush_served_queries()

    def flush_served_queries(self) -> int:
        """Write remembered query embeddings to SQL (the tuner's evaluation set)."""
        from workers.tuning.evalset import record_served

        with self._served_lock:
            batch, self._served = self._served, []
            self._last_query_flush = time.monotonic()
        if not batch:
            return 0
        try:
            with self._sessions.begin() as session:
                record_served(session, self.model, [v for v, _ in batch],
                              [lang for _, lang in batch], self._keep_queries)  # fmt: skip
        except Exception as exc:  # an evaluation sample is not worth failing a search for
            log.warning("could not record %d served queries: %s", len(batch), exc)
            return 0
        return len(batch)

    def _hit(self, item: ItemDetails, similarity: float) -> SearchHit:
        neutral = self.weights.neutral_feedback
        return SearchHit(
            item_type=item.item_type,
            item_id=item.item_id,
            language=item.language,
            title=item.title,
            snippet=item.body[:SNIPPET_CHARS],
            similarity=similarity,
            feedback_score=effective_feedback(
                item.feedback_score,
                item.feedback_count,
                neutral,
                item.last_execution_status,
                self.weights.exec_weight,
            ),
            feedback_count=item.feedback_count,
            usage_count=item.usage_count,
            combined=combined_score(
                similarity,
                item.feedback_score,
                item.feedback_count,
                item.usage_count,
                self.weights,
                item.last_execution_status,
            ),
            details=item,
        )

    def record_use(self, hits: Iterable[SearchHit]) -> None:
        """Count that these items were put into a prompt (raises their usage term)."""
        hits = list(hits)
        with self._sessions.begin() as session:
            record_usage(
                session=session,
                generation_ids=[h.item_id for h in hits if h.item_type == store.GENERATION],
                knowledge_ids=[h.item_id for h in hits if h.item_type == store.KNOWLEDGE],
            )

    def session(self) -> Session:
        """A read session on the retriever's database (use as a context manager)."""
        return self._sessions()

    def transaction(self) -> AbstractContextManager[Session]:
        """A session that commits on leaving the block."""
        return self._sessions.begin()

    # --- introspection (tests, metrics) -------------------------------------------------------
    @property
    def size(self) -> int:
        with self._lock:
            return 0 if self._index is None else len(self._index)

    @property
    def params(self) -> HnswParams | None:
        """The HNSW parameters of the index answering searches now."""
        with self._lock:
            return None if self._index is None else self._index.params

    @property
    def high_water_mark(self) -> int:
        return self._hwm

    def labels(self) -> dict[int, LabelInfo]:
        with self._lock:
            return {} if self._index is None else dict(self._index.labels)

    def watched_gaps(self) -> set[int]:
        with self._lock:
            return set(self._gaps)
