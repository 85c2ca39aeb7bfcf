//! The cost ledger: every provider attempt (answered or failed) with its tokens and cost, in
//! SQLite under `$LOTUS_HOME/data/ledger.db`; and the running totals budgets are checked against.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::types::Usage;

/// One attempt to record.
#[derive(Clone, Debug)]
pub struct Entry<'a> {
    /// `openai`, …
    pub provider: &'a str,
    /// The model name (after `provider:`).
    pub model: &'a str,
    /// The module (or `cli`, `api`) the call was made for.
    pub module: &'a str,
    /// Tokens used.
    pub usage: Usage,
    /// USD (0 when the model is unpriced or the attempt failed before any tokens).
    pub cost_usd: f64,
    /// `ok`, or the error's code.
    pub outcome: &'a str,
    /// How long the attempt took.
    pub latency: Duration,
}

/// The costs since a day, and the spending today and this month (UTC).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CostReport {
    /// The first day, `YYYY-MM-DD`.
    pub since: String,
    /// Totals by day, provider, model and module, newest day first.
    pub rows: Vec<CostRow>,
    /// USD spent today.
    pub today_usd: f64,
    /// USD spent this month.
    pub month_usd: f64,
}

/// One line of `lotus provider costs`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CostRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Provider.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Module.
    pub module: String,
    /// Attempts (answered or not).
    pub calls: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// USD.
    pub cost_usd: f64,
}

/// The ledger.
pub struct Ledger {
    conn: Mutex<Connection>,
    totals: Mutex<Totals>,
}

/// Spending of the current UTC day and month, kept in memory so budget checks cost nothing.
#[derive(Default)]
struct Totals {
    /// Days since the Unix epoch of the totals (a new month always starts a new day).
    day_index: u64,
    day: String,
    day_usd: f64,
    month: String,
    month_usd: f64,
}

fn day_index(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400
}

/// The UTC civil date of `t`: (`YYYY-MM-DD`, `YYYY-MM`).
pub fn utc_day(t: SystemTime) -> (String, String) {
    let days = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}-{m:02}-{d:02}"), format!("{y:04}-{m:02}"))
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let conn =
            Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS calls (
                 id INTEGER PRIMARY KEY,
                 time_us INTEGER NOT NULL,
                 day TEXT NOT NULL,
                 month TEXT NOT NULL,
                 provider TEXT NOT NULL,
                 model TEXT NOT NULL,
                 module TEXT NOT NULL,
                 input_tokens INTEGER NOT NULL,
                 cached_input_tokens INTEGER NOT NULL,
                 output_tokens INTEGER NOT NULL,
                 cost_usd REAL NOT NULL,
                 outcome TEXT NOT NULL,
                 latency_ms INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS calls_day ON calls (day);
             CREATE INDEX IF NOT EXISTS calls_month ON calls (month);
             CREATE TRIGGER IF NOT EXISTS calls_append_only BEFORE UPDATE ON calls
             BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;",
        )
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        let ledger = Self {
            conn: Mutex::new(conn),
            totals: Mutex::new(Totals::default()),
        };
        ledger.reload_totals(SystemTime::now())?;
        Ok(ledger)
    }

    fn reload_totals(&self, now: SystemTime) -> Result<(), String> {
        let (day, month) = utc_day(now);
        let conn = self.conn.lock();
        let sum = |col: &str, key: &str| -> Result<f64, String> {
            conn.query_row(
                &format!("SELECT COALESCE(SUM(cost_usd), 0) FROM calls WHERE {col} = ?1"),
                [key],
                |r| r.get(0),
            )
            .map_err(|e| format!("cannot read the ledger: {e}"))
        };
        let t = Totals {
            day_index: day_index(now),
            day_usd: sum("day", &day)?,
            month_usd: sum("month", &month)?,
            day,
            month,
        };
        *self.totals.lock() = t;
        Ok(())
    }

    /// USD spent today and this month (UTC). Costs nothing unless the day changed, when the
    /// totals are read again from the ledger.
    pub fn spent(&self) -> Result<(f64, f64), String> {
        let now = SystemTime::now();
        if self.totals.lock().day_index != day_index(now) {
            self.reload_totals(now)?;
        }
        let t = self.totals.lock();
        Ok((t.day_usd, t.month_usd))
    }

    /// Records an attempt.
    pub fn record(&self, e: &Entry<'_>) -> Result<(), String> {
        let now = SystemTime::now();
        let (day, month) = utc_day(now);
        let time_us = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as i64;
        self.conn
            .lock()
            .execute(
                "INSERT INTO calls (time_us, day, month, provider, model, module, input_tokens,
                  cached_input_tokens, output_tokens, cost_usd, outcome, latency_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    time_us,
                    day,
                    month,
                    e.provider,
                    e.model,
                    e.module,
                    e.usage.input_tokens as i64,
                    e.usage.cached_input_tokens as i64,
                    e.usage.output_tokens as i64,
                    e.cost_usd,
                    e.outcome,
                    e.latency.as_millis() as i64,
                ],
            )
            .map_err(|err| format!("cannot write the ledger: {err}"))?;
        let mut t = self.totals.lock();
        if t.day == day {
            t.day_usd += e.cost_usd;
        }
        if t.month == month {
            t.month_usd += e.cost_usd;
        }
        Ok(())
    }

    /// The costs of the last `days` days (today included) and what was spent today and this
    /// month, as `lotus provider costs` and `GET /api/v1/providers/costs` show them.
    pub fn report(&self, days: u32) -> Result<CostReport, String> {
        let since =
            SystemTime::now() - std::time::Duration::from_secs(86_400 * u64::from(days.max(1) - 1));
        let (since, _) = utc_day(since);
        let rows = self.costs(&since)?;
        let (today_usd, month_usd) = self.spent()?;
        Ok(CostReport {
            since,
            rows,
            today_usd,
            month_usd,
        })
    }

    /// Totals by day, provider, model and module, for days from `since` (`YYYY-MM-DD`,
    /// inclusive), newest day first.
    pub fn costs(&self, since: &str) -> Result<Vec<CostRow>, String> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare(
                "SELECT day, provider, model, module, COUNT(*), SUM(outcome <> 'ok'),
                        SUM(input_tokens), SUM(output_tokens), SUM(cost_usd)
                 FROM calls WHERE day >= ?1
                 GROUP BY day, provider, model, module
                 ORDER BY day DESC, SUM(cost_usd) DESC, provider, model, module",
            )
            .map_err(|e| format!("cannot read the ledger: {e}"))?;
        let rows = stmt
            .query_map([since], |r| {
                Ok(CostRow {
                    day: r.get(0)?,
                    provider: r.get(1)?,
                    model: r.get(2)?,
                    module: r.get(3)?,
                    calls: r.get::<_, i64>(4)? as u64,
                    failures: r.get::<_, i64>(5)? as u64,
                    input_tokens: r.get::<_, i64>(6)? as u64,
                    output_tokens: r.get::<_, i64>(7)? as u64,
                    cost_usd: r.get(8)?,
                })
            })
            .map_err(|e| format!("cannot read the ledger: {e}"))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| format!("cannot read the ledger: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right_across_leap_years() {
        let at = |secs: u64| utc_day(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), ("1970-01-01".into(), "1970-01".into()));
        assert_eq!(at(951_782_400), ("2000-02-29".into(), "2000-02".into()));
        assert_eq!(at(1_798_761_599), ("2026-12-31".into(), "2026-12".into()));
        assert_eq!(at(1_798_761_600), ("2027-01-01".into(), "2027-01".into()));
    }

    #[test]
    fn the_ledger_adds_up_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/ledger.db");
        let ledger = Ledger::open(&path).expect("open");
        let entry = |provider, module, cost, outcome| Entry {
            provider,
            model: "m",
            module,
            usage: Usage {
                input_tokens: 100,
                output_tokens: 10,
                cached_input_tokens: 0,
            },
            cost_usd: cost,
            outcome,
            latency: Duration::from_millis(5),
        };
        ledger
            .record(&entry("openai", "cli", 0.25, "ok"))
            .expect("record");
        ledger
            .record(&entry("openai", "cli", 0.0, "server"))
            .expect("record");
        ledger
            .record(&entry("ollama", "notes", 0.0, "ok"))
            .expect("record");
        ledger
            .record(&entry("openai", "cli", 0.5, "ok"))
            .expect("record");
        assert_eq!(ledger.spent().expect("spent"), (0.75, 0.75));
        drop(ledger);
        let ledger = Ledger::open(&path).expect("reopen");
        assert_eq!(ledger.spent().expect("spent"), (0.75, 0.75));
        let rows = ledger.costs("1970-01-01").expect("costs");
        assert_eq!(rows.len(), 2);
        let openai = &rows[0];
        assert_eq!(
            (
                openai.provider.as_str(),
                openai.calls,
                openai.failures,
                openai.input_tokens,
                openai.cost_usd
            ),
            ("openai", 3, 1, 300, 0.75)
        );
        let update = ledger
            .conn
            .lock()
            .execute("UPDATE calls SET cost_usd = 0", []);
        assert!(update.is_err(), "append-only");
    }
}
