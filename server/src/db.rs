//! One database code path over SQLite (embedded default) and PostgreSQL (scale).
//!
//! Every query goes through [`Db::run`] (reads) or [`Db::write`] (one write transaction), which take a
//! pooled connection and run on tokio's blocking pool. On SQLite, write transactions start with
//! `BEGIN IMMEDIATE`: the write lock is taken up front, so concurrent writers queue on the busy
//! timeout instead of failing with `SQLITE_BUSY` when a read transaction tries to upgrade.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::{
    AnsiTransactionManager, Connection, SimpleConnection, TransactionManager,
};
use diesel::pg::PgConnection;
use diesel::r2d2::{self, ManageConnection, R2D2Connection};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::redact_url;
use crate::error::StartupError;

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// How long a SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 15_000;

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database URL whose backend was chosen explicitly from its scheme.
#[derive(Clone)]
pub struct DbUrl {
    pub backend: Backend,
    /// What the driver is given: a file path for SQLite, the whole URL for PostgreSQL.
    target: String,
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<Self, StartupError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StartupError::Config(
                    "sqlite:// URL has no file path".into(),
                ));
            }
            Ok(DbUrl {
                backend: Backend::Sqlite,
                target: path.to_string(),
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DbUrl {
                backend: Backend::Postgres,
                target: url.to_string(),
            })
        } else {
            Err(StartupError::Config(format!(
                "unsupported database URL {:?}: use sqlite://PATH or postgres://USER@HOST/DB",
                redact_url(url)
            )))
        }
    }

    fn connect(&self) -> diesel::ConnectionResult<DbConnection> {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(&self.target)?;
                conn.batch_execute(&format!(
                    "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
                     PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;"
                ))
                .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
                Ok(DbConnection::Sqlite(conn))
            }
            Backend::Postgres => Ok(DbConnection::Postgres(PgConnection::establish(
                &self.target,
            )?)),
        }
    }
}

/// r2d2 manager that connects to the backend named by the URL's scheme (diesel's own manager would
/// try each backend in turn, and SQLite happily opens a file named `postgres://…`).
pub struct Manager {
    url: DbUrl,
    /// Connections found lost so far (shared with [`Db`]): when it moves, every connection used
    /// before is pinged at its next checkout, as one lost connection usually means all of them
    /// were (the database restarted).
    lost: Arc<AtomicU64>,
}

impl ManageConnection for Manager {
    type Connection = Pooled;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<Pooled, r2d2::Error> {
        Ok(Pooled {
            conn: self.url.connect().map_err(r2d2::Error::ConnectionError)?,
            fine_at: None,
            lost_seen: self.lost.load(Ordering::Acquire),
        })
    }

    /// Pings the connection when it is checked out, unless its last piece of work ended without
    /// error less than [`RECENTLY`] ago and no connection was found lost since. On a busy server
    /// nearly every checkout is such, and the ping was a round trip of its own before each of a
    /// sync's four database calls.
    fn is_valid(&self, conn: &mut Pooled) -> Result<(), r2d2::Error> {
        if conn.fine_at.is_some_and(|at| at.elapsed() < RECENTLY)
            && conn.lost_seen == self.lost.load(Ordering::Acquire)
        {
            return Ok(());
        }
        conn.check(&self.lost).map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut Pooled) -> bool {
        conn.conn.is_broken()
    }
}

/// A connection used without error this recently is handed out again without a ping.
const RECENTLY: Duration = Duration::from_secs(1);

/// A pooled connection, and when work on it last ended without error.
pub struct Pooled {
    conn: DbConnection,
    fine_at: Option<Instant>,
    /// [`Manager::lost`] as of then.
    lost_seen: u64,
}

impl Pooled {
    /// Its work just ended without error.
    fn fine(&mut self, lost: &AtomicU64) {
        self.fine_at = Some(Instant::now());
        self.lost_seen = lost.load(Ordering::Acquire);
    }

    /// Pings it: alive, it counts as fine; lost, every connection is pinged at its next checkout.
    fn check(&mut self, lost: &AtomicU64) -> diesel::QueryResult<()> {
        match self.conn.ping() {
            Ok(()) => {
                self.fine(lost);
                Ok(())
            }
            Err(error) => {
                self.fine_at = None;
                lost.fetch_add(1, Ordering::AcqRel);
                Err(error)
            }
        }
    }
}

impl std::ops::Deref for Pooled {
    type Target = DbConnection;
    fn deref(&self) -> &DbConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut DbConnection {
        &mut self.conn
    }
}

pub type Pool = r2d2::Pool<Manager>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("connection pool: {0}")]
    Pool(String),
    #[error("blocking task was canceled")]
    Canceled,
}

/// The database handle every part of the server uses.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    backend: Backend,
    /// SQLite has one writer at a time. Writers of this process queue here, and each takes a
    /// connection only when its turn comes: waiting in SQLite's busy handler instead would sleep
    /// in growing steps (1, 2, 5, 10 … 100 ms) long after the lock was free, and would hold a
    /// pooled connection that readers need. Other processes (the command line) still meet the
    /// busy timeout.
    writer: Arc<Mutex<()>>,
    /// SQLite write transactions since the last WAL checkpoint, and whether one is running. The
    /// automatic checkpoint is off: it would run inside a committing writer's turn, copying and
    /// syncing pages while every other writer waits. [`Db::write_blocking`] checkpoints after its
    /// turn instead, every [`CHECKPOINT_EVERY`] writes, one at a time.
    writes: Arc<AtomicU32>,
    checkpointing: Arc<AtomicBool>,
    /// See [`Manager::lost`].
    lost: Arc<AtomicU64>,
    /// Database jobs in flight on blocking threads ([`Db::run`], [`Db::write`]): twice the pool.
    /// More could only wait for a connection or the writer's turn, each parked on a thread of its
    /// own; under a burst of phones that was 140 threads and their allocator heaps (issue 21:
    /// 200 phones, 556 MB). Beyond, a job waits here, as a future, costing no thread.
    jobs: Arc<tokio::sync::Semaphore>,
}

/// SQLite write transactions between WAL checkpoints (a sync request writes ~50 pages).
const CHECKPOINT_EVERY: u32 = 20;

impl Db {
    /// Opens the pool (creating the SQLite file and its directory if needed) without migrating.
    pub fn open(url: &str, pool_size: u32) -> Result<Db, StartupError> {
        let url = DbUrl::parse(url)?;
        if url.backend == Backend::Sqlite {
            if let Some(dir) = Path::new(&url.target).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)?;
            }
            // WAL is a property of the file: set it once, before the pool opens its connections.
            let mut conn = url
                .connect()
                .map_err(|e| StartupError::Database(e.to_string()))?;
            conn.batch_execute("PRAGMA journal_mode = WAL;")
                .map_err(|e| StartupError::Database(e.to_string()))?;
        }
        let backend = url.backend;
        let lost = Arc::new(AtomicU64::new(0));
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .connection_timeout(Duration::from_secs(10))
            .build(Manager {
                url,
                lost: lost.clone(),
            })
            .map_err(|e| StartupError::Database(e.to_string()))?;
        Ok(Db {
            pool,
            backend,
            writer: Arc::new(Mutex::new(())),
            writes: Arc::new(AtomicU32::new(0)),
            checkpointing: Arc::new(AtomicBool::new(false)),
            lost,
            jobs: Arc::new(tokio::sync::Semaphore::new(2 * pool_size.max(1) as usize)),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies every pending migration of this backend's tree.
    pub fn migrate(&self) -> Result<Vec<String>, StartupError> {
        let mut conn = self
            .get()
            .map_err(|e| StartupError::Database(e.to_string()))?;
        let applied = match &mut **conn {
            DbConnection::Sqlite(c) => c
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map(|v| v.iter().map(|m| m.to_string()).collect()),
            DbConnection::Postgres(c) => c
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|v| v.iter().map(|m| m.to_string()).collect()),
        };
        applied.map_err(|e| StartupError::Migration(e.to_string()))
    }

    /// True when this backend's tree has migrations the database has not run yet.
    pub fn has_pending_migrations(&self) -> Result<bool, StartupError> {
        let mut conn = self.get()?;
        let pending = match &mut **conn {
            DbConnection::Sqlite(c) => c.has_pending_migration(SQLITE_MIGRATIONS),
            DbConnection::Postgres(c) => c.has_pending_migration(POSTGRES_MIGRATIONS),
        };
        pending.map_err(|e| StartupError::Migration(e.to_string()))
    }

    /// Reverts every migration (used by the up → down → up test).
    pub fn revert_all(&self) -> Result<(), StartupError> {
        let mut conn = self
            .get()
            .map_err(|e| StartupError::Database(e.to_string()))?;
        let result = match &mut **conn {
            DbConnection::Sqlite(c) => c.revert_all_migrations(SQLITE_MIGRATIONS).map(|_| ()),
            DbConnection::Postgres(c) => c.revert_all_migrations(POSTGRES_MIGRATIONS).map(|_| ()),
        };
        result.map_err(|e| StartupError::Migration(e.to_string()))
    }

    /// Reverts the newest migration the database has run, and returns its name (used by the
    /// tests of a migration on data an older version stored).
    pub fn revert_last(&self) -> Result<String, StartupError> {
        let mut conn = self
            .get()
            .map_err(|e| StartupError::Database(e.to_string()))?;
        let result = match &mut **conn {
            DbConnection::Sqlite(c) => c
                .revert_last_migration(SQLITE_MIGRATIONS)
                .map(|v| v.to_string()),
            DbConnection::Postgres(c) => c
                .revert_last_migration(POSTGRES_MIGRATIONS)
                .map(|v| v.to_string()),
        };
        result.map_err(|e| StartupError::Migration(e.to_string()))
    }

    fn get(&self) -> Result<r2d2::PooledConnection<Manager>, DbError> {
        self.pool.get().map_err(|e| DbError::Pool(e.to_string()))
    }

    /// Runs `f` with a pooled connection on the blocking pool.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let db = self.clone();
        let turn = self.turn().await?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            db.run_blocking(f)
        })
        .await
        .map_err(|_| DbError::Canceled)?
    }

    /// At most `jobs` database jobs in flight (`GRIDPATROL_DB_JOBS`), instead of twice the pool.
    pub fn with_jobs(self, jobs: usize) -> Db {
        Db {
            jobs: Arc::new(tokio::sync::Semaphore::new(jobs.max(1))),
            ..self
        }
    }

    /// A place among the jobs in flight, held by the blocking job itself (so that a request
    /// given up on still holds it until its job ends).
    async fn turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, DbError> {
        self.jobs
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DbError::Canceled)
    }

    /// Runs `f` inside one write transaction (see [`write_transaction`]).
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + From<diesel::result::Error> + Send + 'static,
    {
        let db = self.clone();
        let turn = self.turn().await?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            db.write_blocking(f)
        })
        .await
        .map_err(|_| DbError::Canceled)?
    }

    /// Synchronous access for command-line tools and benchmarks.
    pub fn run_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E>,
        E: From<DbError>,
    {
        let mut conn = self.get()?;
        let result = f(&mut conn);
        match &result {
            Ok(_) => conn.fine(&self.lost),
            // Failed work is rare: a ping tells whether the connection was lost (the error is
            // the work's, whatever the ping finds).
            Err(_) => {
                let _alive = conn.check(&self.lost);
            }
        }
        result
    }

    /// Synchronous write transaction for command-line tools.
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E>,
        E: From<DbError> + From<diesel::result::Error>,
    {
        if self.backend != Backend::Sqlite {
            return self.run_blocking(|conn| write_transaction(conn, f));
        }
        let result = {
            let _turn = self
                .writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.run_blocking(|conn| write_transaction(conn, f))
        };
        if self.writes.fetch_add(1, Ordering::Relaxed) + 1 >= CHECKPOINT_EVERY {
            self.checkpoint();
        }
        result
    }

    /// Copies the SQLite WAL back into the database file (PASSIVE: readers and writers go on
    /// meanwhile), unless another thread is at it. Failures are logged: the WAL then grows a
    /// little longer until the next checkpoint.
    pub fn checkpoint(&self) {
        if self.backend != Backend::Sqlite
            || self
                .checkpointing
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.writes.store(0, Ordering::Relaxed);
        let done = self.get().map(|mut conn| {
            conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE);")
                .map_err(|error| tracing::warn!(%error, "WAL checkpoint failed"))
        });
        if let Err(error) = done {
            tracing::warn!(%error, "WAL checkpoint: no connection");
        }
        self.checkpointing.store(false, Ordering::Release);
    }
}

/// One write transaction: `BEGIN IMMEDIATE` on SQLite, a plain `BEGIN` on PostgreSQL. Commits when
/// `f` succeeds, rolls back when it fails; nested `conn.transaction(…)` calls become savepoints.
pub fn write_transaction<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    match conn {
        DbConnection::Sqlite(c) => {
            AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?
        }
        DbConnection::Postgres(c) => AnsiTransactionManager::begin_transaction(c)?,
    }
    type Tm = <DbConnection as Connection>::TransactionManager;
    match f(conn) {
        Ok(value) => match Tm::commit_transaction(conn) {
            Ok(()) => Ok(value),
            Err(error) => {
                let _ = Tm::rollback_transaction(conn);
                Err(error.into())
            }
        },
        Err(error) => {
            Tm::rollback_transaction(conn)?;
            Err(error)
        }
    }
}

/// Runs the same diesel expression on whichever backend the connection is: for the few statements
/// diesel's `MultiConnection` cannot express (`ON CONFLICT`), written once, compiled per backend.
#[macro_export]
macro_rules! on_each_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConnection::Sqlite($c) => $body,
            $crate::db::DbConnection::Postgres($c) => $body,
        }
    };
}

/// Current time in UTC, at the precision both backends store (microseconds).
pub fn now() -> chrono::NaiveDateTime {
    let now = chrono::Utc::now().naive_utc();
    chrono::DurationRound::duration_trunc(now, chrono::Duration::microseconds(1)).unwrap_or(now)
}

/// A query that PostgreSQL plans anew, with its actual parameters, every time it runs: diesel sends
/// it unnamed (parsed and planned with the values, in the same round trip) instead of preparing it
/// once per pooled connection.
///
/// For lookups by key (`id = ANY($1)`) in tables that grow from empty. A prepared statement keeps
/// the plan PostgreSQL settled on after its first five runs, until the table's statistics next
/// change; made while a table was a few pages, that plan is a sequential scan. A new server's
/// connections kept one for the premerge lookup of a sync's documents and for the snapshot lookup
/// of the compliance worker while the tables grew to 10,000 patrols: 2 ms and 7 ms a run, the
/// largest share of PostgreSQL's time in the ingest benchmark. Planning each run costs tens of
/// microseconds. On SQLite this changes nothing: its plans do not depend on a table's size.
#[derive(Debug, Clone, Copy)]
pub struct Replanned<Q>(pub Q);

impl<Q> diesel::query_builder::QueryId for Replanned<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Replanned<Q> {
    type SqlType = Q::SqlType;
}

impl<Q, DB> diesel::query_builder::QueryFragment<DB> for Replanned<Q>
where
    DB: diesel::backend::Backend,
    Q: diesel::query_builder::QueryFragment<DB>,
{
    fn walk_ast<'b>(
        &'b self,
        mut pass: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> diesel::QueryResult<()> {
        pass.unsafe_to_cache_prepared();
        self.0.walk_ast(pass)
    }
}

impl<Q, Conn> diesel::RunQueryDsl<Conn> for Replanned<Q> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_chosen_by_scheme() {
        assert_eq!(
            DbUrl::parse("sqlite:///tmp/x.db").map(|u| u.backend).ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            DbUrl::parse("postgres://u@h/db").map(|u| u.backend).ok(),
            Some(Backend::Postgres)
        );
        let err = DbUrl::parse("mysql://root:pw@h/db")
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("unsupported database URL"), "{err}");
        assert!(!err.contains("pw@"), "password leaked: {err}");
        assert!(DbUrl::parse("/plain/path.db").is_err());
        assert!(DbUrl::parse("sqlite://").is_err());
    }

    /// The premerge lookup is one diesel would prepare and keep per connection; wrapped, it is
    /// sent unnamed, so PostgreSQL plans it with its ids each time.
    #[test]
    fn replanned_queries_are_not_kept_prepared() {
        use crate::schema::sync_documents;
        use diesel::pg::Pg;
        use diesel::prelude::*;
        use diesel::query_builder::QueryFragment;
        let ids = vec!["a", "b"];
        let lookup = sync_documents::table
            .filter(sync_documents::id.eq_any(ids))
            .select((sync_documents::id, sync_documents::bytes));
        let cacheable = |q: &dyn QueryFragment<Pg>| q.is_safe_to_cache_prepared(&Pg).ok();
        assert_eq!(cacheable(&lookup), Some(true));
        let replanned = Replanned(lookup);
        assert_eq!(cacheable(&replanned), Some(false));
        // The same SQL either way.
        assert_eq!(
            diesel::debug_query::<Pg, _>(&replanned).to_string(),
            diesel::debug_query::<Pg, _>(&replanned.0).to_string()
        );
    }
}
