//! The coordinator's state in SQLite: jobs and every round's metrics.
//!
//! One connection behind a `std::sync::Mutex`: statements are short, so async tasks never hold the
//! lock across an await. The run folder is an export of this state.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use shoal_shared::text::clip;

use crate::engine::round::RoundRecord;
use crate::error::{Error, Result};

/// A model's checkpoint inside a job's own JSON checkpoint (fusion's variant, AutoML's best and
/// default trials): base64 text, or, as Shoal wrote before weights checkpoints were binary, the
/// model's JSON checkpoint itself (base64 never starts with `{`).
pub mod nested {
    use base64::Engine;

    pub fn encode(checkpoint: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(checkpoint)
    }

    pub fn decode(text: &str) -> crate::error::Result<Vec<u8>> {
        if text.starts_with('{') {
            return Ok(text.as_bytes().to_vec());
        }
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| {
                crate::error::Error::Job(format!(
                    "a model checkpoint inside the job's is not base64: {e}"
                ))
            })
    }
}

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Finished,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Finished => "finished",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "finished" => JobStatus::Finished,
            "cancelled" => JobStatus::Cancelled,
            _ => JobStatus::Failed,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Finished | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job row.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub status: JobStatus,
    pub spec_toml: String,
    pub created_ms: u64,
    pub rounds_total: u32,
    pub rounds_done: u32,
    pub error: Option<String>,
    pub run_dir: String,
}

/// SQLite-backed state store.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    /// The state dir's lock (`shoal.lock`), held for as long as the store is open: a second
    /// process on the same dir would resume and rewrite the jobs this one runs.
    _lock: Option<std::fs::File>,
}

/// SQLite page size of a new store (SQLite's largest, 64 KiB).
const CHECKPOINT_PAGE_SIZE: i64 = 65536;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    rounds_total INTEGER NOT NULL,
    rounds_done INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    run_dir TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (job_id, round)
);
-- An external model's initial parameters (init = file or client), encoded as a
-- shoal.v1.Parameters message: what round 1 starts from, again after a restart.
CREATE TABLE IF NOT EXISTS initial_parameters (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    tensors BLOB NOT NULL
);
-- The state a running job resumes from: written with its round, in the same transaction.
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT PRIMARY KEY REFERENCES jobs(id),
    round INTEGER NOT NULL,
    state TEXT NOT NULL
);
-- What a job's end-of-job phase worked out (the client table, the centralized baseline), as
-- JSON by name: a restart in that phase reuses them instead of working them out again.
CREATE TABLE IF NOT EXISTS end_results (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (job_id, name)
);
";

/// Takes `DIR/shoal.lock` for this process (an advisory lock the OS lets go when the process
/// ends, however it ends) and writes who holds it; refuses, naming the holder, when another
/// process has it.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("shoal.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = clip(holder.trim(), 300);
            return Err(Error::Config(format!(
                "state dir {} is in use by another coordinator ({holder}); give each serve its own --state-dir, or stop that one first",
                dir.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::io(format!("cannot lock {}", path.display()), e))
        }
    }
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let me = format!(
        "pid {} on {}, since unix time {since}",
        std::process::id(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "this host".into())
    );
    // Who holds it is for the message above; failing to write it does not matter.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = file.write_all(me.as_bytes());
    Ok(file)
}

/// Whether `e` is an outage of the storage (a full disk, an I/O error, a busy database) that
/// may pass, rather than a fault of what was written.
pub fn is_outage(e: &Error) -> bool {
    use rusqlite::ErrorCode as C;
    match e {
        Error::Store(rusqlite::Error::SqliteFailure(f, _)) => matches!(
            f.code,
            C::DiskFull | C::SystemIoFailure | C::DatabaseBusy | C::DatabaseLocked | C::CannotOpen
        ),
        _ => false,
    }
}

impl Store {
    /// Opens (creating if needed) `DIR/shoal.db`, after taking the dir's lock (one process per
    /// state dir) and checking that an existing database is intact.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create state dir {}", dir.display()), e))?;
        let lock = lock_dir(dir)?;
        let path = dir.join("shoal.db");
        let damaged = |why: String| {
            Error::Config(format!(
                "state dir {}: shoal.db {why}; restore it from a backup, or move it away to start with no jobs",
                dir.display()
            ))
        };
        // SQLite takes an empty file for a new database: a truncated store would come back as a
        // coordinator with no jobs, without a word.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            return Err(damaged("is empty (0 bytes), so it was truncated".into()));
        }
        let conn = Connection::open(&path)?;
        let check = (|| -> rusqlite::Result<Vec<String>> {
            // Large pages for a new store (an existing one keeps its own): a checkpoint is one
            // model-sized BLOB, written each round, and with 4 KiB pages its overflow chain is
            // thousands of pages, each with its own WAL frame.
            conn.pragma_update(None, "page_size", CHECKPOINT_PAGE_SIZE)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let mut stmt = conn.prepare("PRAGMA quick_check")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        })();
        match check {
            Ok(lines) if lines.first().is_some_and(|l| l == "ok") => {}
            Ok(lines) => {
                let first = lines.first().cloned().unwrap_or_default();
                return Err(damaged(format!(
                    "is damaged (PRAGMA quick_check: {}{})",
                    clip(&first, 200),
                    if lines.len() > 1 {
                        format!(", and {} more problems", lines.len() - 1)
                    } else {
                        String::new()
                    }
                )));
            }
            Err(e) => return Err(damaged(format!("cannot be read as a database ({e})"))),
        }
        let mut store = Self::init(conn)?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// Caps the database at `pages` pages (SQLite's `max_page_count`; `None`: no cap beyond
    /// SQLite's own): writes past it fail as on a full disk. Tests use it to fill the "disk".
    #[doc(hidden)]
    pub fn limit_pages(&self, pages: Option<u32>) -> Result<()> {
        let n = pages.map_or(i64::from(u32::MAX) * 2, i64::from);
        self.conn().pragma_update(None, "max_page_count", n)?;
        Ok(())
    }

    /// Pages the database uses now.
    #[doc(hidden)]
    pub fn page_count(&self) -> Result<u32> {
        Ok(self
            .conn()
            .pragma_query_value(None, "page_count", |r| r.get(0))?)
    }

    /// A store that lives only as long as the process (for `simulate`).
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
            _lock: None,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent: take the connection back.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert_job(&self, job: &JobRow) -> Result<()> {
        Self::insert_job_in(&self.conn(), job)
    }

    fn insert_job_in(conn: &Connection, job: &JobRow) -> Result<()> {
        conn.execute(
            "INSERT INTO jobs (id, kind, status, spec, created_ms, rounds_total, rounds_done, error, run_dir)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                job.id,
                job.kind,
                job.status.as_str(),
                job.spec_toml,
                job.created_ms as i64,
                job.rounds_total,
                job.rounds_done,
                job.error,
                job.run_dir
            ],
        )?;
        Ok(())
    }

    /// Inserts a job and its initial parameters in one transaction: a job is never stored
    /// without the parameters it needs.
    pub fn insert_job_with_initial(&self, job: &JobRow, tensors: &[u8]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        Self::insert_job_in(&tx, job)?;
        tx.execute(
            "INSERT INTO initial_parameters (job_id, tensors) VALUES (?1, ?2)",
            params![job.id, tensors],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Keeps a job's initial parameters (those a client gave, before round 1).
    pub fn save_initial(&self, id: &str, tensors: &[u8]) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO initial_parameters (job_id, tensors) VALUES (?1, ?2)",
            params![id, tensors],
        )?;
        Ok(())
    }

    /// A job's initial parameters, if it has any.
    pub fn initial(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT tensors FROM initial_parameters WHERE job_id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_rounds_total(&self, id: &str, rounds: u32) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET rounds_total = ?2 WHERE id = ?1",
            params![id, rounds],
        )?;
        Ok(())
    }

    pub fn set_status(&self, id: &str, status: JobStatus, error: Option<&str>) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET status = ?2, error = ?3 WHERE id = ?1",
            params![id, status.as_str(), error],
        )?;
        Ok(())
    }

    /// Records a completed round and advances the job's progress in one transaction.
    pub fn record_round(&self, id: &str, record: &RoundRecord) -> Result<()> {
        self.record_round_with(id, record, None)
    }

    /// Records a round and, when given, the job's checkpoint after it, in one transaction: a
    /// crash leaves both or neither, so a resumed job neither loses nor repeats a round.
    pub fn record_round_with(
        &self,
        id: &str,
        record: &RoundRecord,
        checkpoint: Option<&[u8]>,
    ) -> Result<()> {
        let metrics = serde_json::to_string(record)
            .map_err(|e| Error::Job(format!("cannot encode round metrics: {e}")))?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO rounds (job_id, round, metrics) VALUES (?1, ?2, ?3)",
            params![id, record.round, metrics],
        )?;
        tx.execute(
            "UPDATE jobs SET rounds_done = ?2 WHERE id = ?1",
            params![id, record.round],
        )?;
        if let Some(state) = checkpoint {
            tx.execute(
                "INSERT OR REPLACE INTO checkpoints (job_id, round, state) VALUES (?1, ?2, ?3)",
                params![id, record.round, state],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The last checkpoint of a job: its round and state. States are BLOBs; stores written
    /// before weights checkpoints were binary hold JSON text, read as its bytes.
    pub fn checkpoint(&self, id: &str) -> Result<Option<(u32, Vec<u8>)>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT round, state FROM checkpoints WHERE job_id = ?1",
                params![id],
                |r| {
                    let state = match r.get_ref(1)? {
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            t.to_vec()
                        }
                        other => {
                            return Err(rusqlite::Error::FromSqlConversionFailure(
                                1,
                                other.data_type(),
                                "a checkpoint is text or bytes".into(),
                            ))
                        }
                    };
                    Ok((r.get(0)?, state))
                },
            )
            .optional()?)
    }

    /// Keeps a result of job `id`'s end-of-job phase under `name` (JSON).
    pub fn save_end_result(&self, id: &str, name: &str, value: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO end_results (job_id, name, value) VALUES (?1, ?2, ?3)",
            params![id, name, value],
        )?;
        Ok(())
    }

    /// A result of job `id`'s end-of-job phase saved under `name`.
    pub fn end_result(&self, id: &str, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT value FROM end_results WHERE job_id = ?1 AND name = ?2",
                params![id, name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Drops the rounds after `round` (work a crash interrupted after its checkpoint).
    pub fn truncate_rounds(&self, id: &str, round: u32) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let dropped = tx.execute(
            "DELETE FROM rounds WHERE job_id = ?1 AND round > ?2",
            params![id, round],
        )?;
        // Rounds run again may end with another model: what the end-of-job phase worked out
        // from the old one no longer holds.
        if dropped > 0 {
            tx.execute("DELETE FROM end_results WHERE job_id = ?1", params![id])?;
        }
        tx.execute(
            "UPDATE jobs SET rounds_done = ?2 WHERE id = ?1",
            params![id, round],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn job(&self, id: &str) -> Result<JobRow> {
        self.conn()
            .query_row(
                "SELECT id, kind, status, spec, created_ms, rounds_total, rounds_done, error, run_dir
                 FROM jobs WHERE id = ?1",
                params![id],
                row_to_job,
            )
            .optional()?
            .ok_or_else(|| Error::JobNotFound(id.to_string()))
    }

    pub fn jobs(&self) -> Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, kind, status, spec, created_ms, rounds_total, rounds_done, error, run_dir
             FROM jobs ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map([], row_to_job)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn rounds(&self, id: &str) -> Result<Vec<RoundRecord>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT metrics FROM rounds WHERE job_id = ?1 ORDER BY round")?;
        let rows = stmt.query_map(params![id], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for text in rows {
            let text = text?;
            out.push(
                serde_json::from_str(&text)
                    .map_err(|e| Error::Job(format!("corrupt round metrics for job {id}: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Marks jobs left running or queued by a previous process as failed, and says so. Returns
    /// their ids. (Resuming them from a checkpoint is planned; until then nothing is hidden.)
    /// Jobs a previous coordinator process left queued or running.
    pub fn interrupted(&self) -> Result<Vec<JobRow>> {
        Ok(self
            .jobs()?
            .into_iter()
            .filter(|j| !j.status.is_terminal())
            .collect())
    }
}

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        status: JobStatus::parse(&r.get::<_, String>(2)?),
        spec_toml: r.get(3)?,
        created_ms: r.get::<_, i64>(4)? as u64,
        rounds_total: r.get(5)?,
        rounds_done: r.get(6)?,
        error: r.get(7)?,
        run_dir: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S10 #5: two `serve` processes shared a state dir; the second resumed the first's job and
    /// rewrote its metrics. The dir is now locked while a store is open.
    #[test]
    fn a_state_dir_serves_one_process_at_a_time_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is in use by another coordinator"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        Store::open(dir.path()).unwrap();
    }

    /// A new store takes 64 KiB pages (a model-sized checkpoint BLOB is then a short overflow
    /// chain: half the write time of 4 KiB pages for a 17 MB model, `bench aggregate`); a store
    /// made with other pages keeps them and still works.
    #[test]
    fn a_new_store_has_large_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let page_size = |s: &Store| -> i64 {
            s.conn()
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .unwrap()
        };
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(page_size(&s), CHECKPOINT_PAGE_SIZE);
        drop(s);
        let old = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(old.path().join("shoal.db")).unwrap();
            c.pragma_update(None, "page_size", 4096).unwrap();
            c.execute_batch("CREATE TABLE t (x INTEGER);").unwrap();
        }
        let s = Store::open(old.path()).unwrap();
        assert_eq!(page_size(&s), 4096);
        s.insert_job(&job("old-pages")).unwrap();
        assert!(s.job("old-pages").is_ok());
    }

    /// S10 #9: a 0-byte `shoal.db` started an empty coordinator without a word, and 4 KB of
    /// garbage in the middle passed start-up. Both are now refused when the store opens.
    #[test]
    fn a_damaged_or_truncated_store_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            for i in 0..200 {
                let mut j = job(&format!("job-{i:04}"));
                j.spec_toml = format!("# {}\nkind = \"train\"", "x".repeat(2000));
                s.insert_job(&j).unwrap();
            }
        }
        let db = dir.path().join("shoal.db");
        let _ = std::fs::remove_file(dir.path().join("shoal.db-wal"));
        let mut bytes = std::fs::read(&db).unwrap();
        assert!(bytes.len() > 64 * 1024, "{}", bytes.len());
        let mid = bytes.len() / 2 / 4096 * 4096;
        for (i, b) in bytes[mid..mid + 4096].iter_mut().enumerate() {
            *b = (i * 7 + 13) as u8;
        }
        std::fs::write(&db, &bytes).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("shoal.db is damaged") || err.contains("cannot be read"),
            "{err}"
        );
        assert!(err.contains("restore it from a backup"), "{err}");

        std::fs::write(&db, b"").unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is empty (0 bytes)"), "{err}");
    }

    fn job(id: &str) -> JobRow {
        JobRow {
            id: id.into(),
            kind: "train".into(),
            status: JobStatus::Queued,
            spec_toml: "kind = \"train\"".into(),
            created_ms: 1,
            rounds_total: 3,
            rounds_done: 0,
            error: None,
            run_dir: "runs/x".into(),
        }
    }

    #[test]
    fn jobs_and_rounds_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.insert_job(&job("a")).unwrap();
            s.set_status("a", JobStatus::Running, None).unwrap();
            let rec = RoundRecord {
                staleness: None,
                round: 1,
                rounds_total: 3,
                clients: 2,
                clients_selected: 2,
                train_loss: 0.5,
                fed_loss: Some(0.4),
                fed_accuracy: Some(0.9),
                test_accuracy: None,
                test_loss: None,
                bytes_up: 10,
                bytes_down: 20,
                seconds: 0.1,
                rejected: 0,
                rejected_by: Default::default(),
                late_by: Default::default(),
                quarantined: Vec::new(),
                silenced: Vec::new(),
            };
            s.record_round_with("a", &rec, Some(b"{\"state\":1}"))
                .unwrap();
            assert_eq!(s.rounds("a").unwrap(), vec![rec.clone()]);
            // A round recorded without its checkpoint (as after a crash mid-write) is dropped
            // again when the job resumes from round 1.
            s.record_round("a", &RoundRecord { round: 2, ..rec })
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let j = s.job("a").unwrap();
        assert_eq!((j.status, j.rounds_done), (JobStatus::Running, 2));
        let interrupted: Vec<String> = s.interrupted().unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(interrupted, vec!["a".to_string()]);
        assert_eq!(
            s.checkpoint("a").unwrap(),
            Some((1, b"{\"state\":1}".to_vec()))
        );
        // A store written before checkpoints were bytes holds them as TEXT: read as its bytes.
        s.conn()
            .execute(
                "UPDATE checkpoints SET state = ?1 WHERE job_id = 'a'",
                params!["{\"old\":1}"],
            )
            .unwrap();
        assert_eq!(
            s.checkpoint("a").unwrap(),
            Some((1, b"{\"old\":1}".to_vec()))
        );
        s.truncate_rounds("a", 1).unwrap();
        assert_eq!(s.rounds("a").unwrap().len(), 1);
        assert_eq!(s.job("a").unwrap().rounds_done, 1);
        assert_eq!(s.checkpoint("b").unwrap(), None);
        assert!(matches!(s.job("nope"), Err(Error::JobNotFound(_))));
    }
}
