//! The coordinator's state in SQLite: jobs and every round's metrics.
//!
//! One connection behind a `std::sync::Mutex`: statements are short, so async tasks never hold the
//! lock across an await. The run folder is an export of this state.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::engine::round::RoundRecord;
use crate::error::{Error, Result};

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
}

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
";

impl Store {
    /// Opens (creating if needed) `DIR/shoal.db`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create state dir {}", dir.display()), e))?;
        let conn = Connection::open(dir.join("shoal.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn)
    }

    /// A store that lives only as long as the process (for `simulate`).
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
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
        checkpoint: Option<&str>,
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

    /// The last checkpoint of a job: its round and state.
    pub fn checkpoint(&self, id: &str) -> Result<Option<(u32, String)>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT round, state FROM checkpoints WHERE job_id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Drops the rounds after `round` (work a crash interrupted after its checkpoint).
    pub fn truncate_rounds(&self, id: &str, round: u32) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM rounds WHERE job_id = ?1 AND round > ?2",
            params![id, round],
        )?;
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
            s.record_round_with("a", &rec, Some("{\"state\":1}"))
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
            Some((1, "{\"state\":1}".to_string()))
        );
        s.truncate_rounds("a", 1).unwrap();
        assert_eq!(s.rounds("a").unwrap().len(), 1);
        assert_eq!(s.job("a").unwrap().rounds_done, 1);
        assert_eq!(s.checkpoint("b").unwrap(), None);
        assert!(matches!(s.job("nope"), Err(Error::JobNotFound(_))));
    }
}
