//! The late-action rule of docs/architecture.md, "The service contract", written once: a
//! compensation that arrives before (or without) its action records a **tombstone**, and the
//! action arriving later is refused with FAILED_PRECONDITION reason
//! [`COMPENSATED_BEFORE_ACTION`] and changes nothing.
//!
//! Each service keeps its own table (its schema is committed), described by a [`TombstoneTable`]:
//! the row of one subject (an order, or an order and a coupon code) that the action and its
//! compensation both claim. The SQL shape is the same for every table, **insert or lock**:
//!
//! ```text
//!  INSERT INTO <table> (<subject>, <columns>, <timestamps>) VALUES (…)
//!      ON CONFLICT (<subject>) DO NOTHING ──1 row──▶ Claim::Inserted (we own the subject)
//!        │ 0 rows: the subject has a row (on PostgreSQL the INSERT waited for a concurrent
//!        ▼          inserter of the same subject to commit or roll back)
//!  SELECT CASE WHEN <tombstone_when> THEN 1 ELSE 0 END FROM <table> WHERE <subject>
//!      [FOR UPDATE on PostgreSQL] ──▶ Claim::Tombstone | Claim::Existing
//!        └─ no row: the concurrent inserter rolled back in between ─▶ UNAVAILABLE, retry
//! ```
//!
//! - an action calls [`claim_action`] (its row is the action's) or, when its own record lives
//!   elsewhere, [`check`]; a tombstone makes both fail with [`compensated_before_action`];
//! - a compensation calls [`record`] (its row is the tombstone) and gets the [`RestorePlan`]:
//!   give back what the action took, or nothing because it never ran (the tombstone now stands)
//!   or was compensated already.
//!
//! Every function takes the connection of the transaction [`super::execute`] runs the command in
//! (the group commit's batch, the command in its own savepoint), so the tombstone commits with
//! the compensation's stored response (and a rejected late action rolls back to the executor's
//! savepoint: nothing changes). A compensation and its late action in one batch meet as they
//! would one after the other: the action's claim finds the tombstone the compensation wrote
//! earlier in the same transaction. On SQLite that transaction is `BEGIN IMMEDIATE`, which
//! already serializes writers, so no row lock is needed there.

use sqlx::AnyConnection;

use crate::{Backend, ServiceError, db::now_ms};

/// `google.rpc.ErrorInfo.reason` of an action refused because its compensation came first (the
/// late-action rule, docs/architecture.md, "The service contract"). The one definition for every
/// service.
pub const COMPENSATED_BEFORE_ACTION: &str = "COMPENSATED_BEFORE_ACTION";

/// The FAILED_PRECONDITION [`COMPENSATED_BEFORE_ACTION`] answer to a late action, with
/// `message` for a person (which compensation came first, for what).
pub fn compensated_before_action(message: impl Into<String>) -> ServiceError {
    ServiceError::precondition(COMPENSATED_BEFORE_ACTION, message)
}

/// A service's table that holds, per subject, the action's record or the compensation's
/// tombstone (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct TombstoneTable {
    /// The table, for example `"reservations"`.
    pub table: &'static str,
    /// The columns that identify the subject: the table's primary key, the `ON CONFLICT` target
    /// (for example `&["order_id"]`). Their values are passed as text, in this order.
    pub subject: &'static [&'static str],
    /// An SQL condition on the row, true when the row is a tombstone (for example
    /// `"status = 'RELEASED'"`, or `"TRUE"` for a table that holds tombstones only). Written in
    /// the code, never built from input.
    pub tombstone_when: &'static str,
    /// Columns set to the current time (unix ms) on insert, for example
    /// `&["created_at", "updated_at"]`.
    pub timestamps: &'static [&'static str],
}

/// One value of a row to insert (besides the subject and the timestamps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Bound as text.
    Text(&'a str),
    /// Bound as a 64-bit integer.
    Int(i64),
}

/// What a claim found (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The row was inserted now: this command is the subject's first.
    Inserted,
    /// The subject had a tombstone.
    Tombstone,
    /// The subject had another row (the action's); it is locked until the transaction ends.
    Existing,
}

/// What a compensation does, as [`record`] decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePlan {
    /// The action never ran: the tombstone now stands, so a late action is refused; nothing to
    /// give back.
    Tombstone,
    /// The action ran: give back what it took and mark its row compensated (its row is locked).
    GiveBack,
    /// Compensated already (a tombstone, or given back): a repeated compensation changes nothing.
    Nothing,
}

impl From<Claim> for RestorePlan {
    fn from(claim: Claim) -> Self {
        match claim {
            Claim::Inserted => Self::Tombstone,
            Claim::Existing => Self::GiveBack,
            Claim::Tombstone => Self::Nothing,
        }
    }
}

/// Whether the action found its subject free or already acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionClaim {
    /// The action's row was inserted now.
    Inserted,
    /// The subject already has an action row (locked): the service decides (a repeat under
    /// another key, or a conflicting action).
    Existing,
}

/// Inserts `row` for `subject` in `table` unless the subject has a row, and says what it found.
///
/// # Errors
/// `UNAVAILABLE` when a concurrent command on the subject rolled back between the two statements
/// (retry), or the database's error.
pub async fn claim(
    conn: &mut AnyConnection,
    backend: Backend,
    table: &TombstoneTable,
    subject: &[&str],
    row: &[(&'static str, Value<'_>)],
) -> Result<Claim, ServiceError> {
    check_arity(table, subject)?;
    let columns: Vec<&str> = table
        .subject
        .iter()
        .copied()
        .chain(row.iter().map(|(c, _)| *c))
        .chain(table.timestamps.iter().copied())
        .collect();
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    // Only names written in the code and placeholders are formatted into the statement.
    let insert = format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO NOTHING",
        table.table,
        columns.join(", "),
        placeholders.join(", "),
        table.subject.join(", "),
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
    for value in subject {
        query = query.bind(*value);
    }
    for (_, value) in row {
        query = match *value {
            Value::Text(text) => query.bind(text),
            Value::Int(int) => query.bind(int),
        };
    }
    let now = now_ms();
    for _ in table.timestamps {
        query = query.bind(now);
    }
    if query.execute(&mut *conn).await?.rows_affected() == 1 {
        return Ok(Claim::Inserted);
    }
    match read(conn, backend, table, subject).await? {
        Some(true) => Ok(Claim::Tombstone),
        Some(false) => Ok(Claim::Existing),
        None => Err(ServiceError::Unavailable(format!(
            "a concurrent command on {} {} did not finish; retry",
            table.table,
            subject.join("/")
        ))),
    }
}

/// The compensation's side: records the tombstone `row` for `subject` unless the subject has a
/// row, and returns what the compensation must do.
///
/// # Errors
/// As [`claim`].
pub async fn record(
    conn: &mut AnyConnection,
    backend: Backend,
    table: &TombstoneTable,
    subject: &[&str],
    row: &[(&'static str, Value<'_>)],
) -> Result<RestorePlan, ServiceError> {
    claim(conn, backend, table, subject, row)
        .await
        .map(RestorePlan::from)
}

/// The action's side, when the action's record is the claimed row: inserts the action's `row`
/// for `subject` unless the subject has a row.
///
/// # Errors
/// FAILED_PRECONDITION [`COMPENSATED_BEFORE_ACTION`] (with `message()`) when the subject has a
/// tombstone; otherwise as [`claim`].
pub async fn claim_action(
    conn: &mut AnyConnection,
    backend: Backend,
    table: &TombstoneTable,
    subject: &[&str],
    row: &[(&'static str, Value<'_>)],
    message: impl FnOnce() -> String,
) -> Result<ActionClaim, ServiceError> {
    match claim(conn, backend, table, subject, row).await? {
        Claim::Inserted => Ok(ActionClaim::Inserted),
        Claim::Existing => Ok(ActionClaim::Existing),
        Claim::Tombstone => Err(compensated_before_action(message())),
    }
}

/// The action's side, when the action writes its record elsewhere (or later): refuses the action
/// when `subject` has a tombstone in `table` (locking the row on PostgreSQL).
///
/// # Errors
/// FAILED_PRECONDITION [`COMPENSATED_BEFORE_ACTION`] (with `message()`) when the subject has a
/// tombstone; the database's error.
pub async fn check(
    conn: &mut AnyConnection,
    backend: Backend,
    table: &TombstoneTable,
    subject: &[&str],
    message: impl FnOnce() -> String,
) -> Result<(), ServiceError> {
    check_arity(table, subject)?;
    match read(conn, backend, table, subject).await? {
        Some(true) => Err(compensated_before_action(message())),
        Some(false) | None => Ok(()),
    }
}

/// `Some(is a tombstone)` for the subject's row, `None` when it has none.
async fn read(
    conn: &mut AnyConnection,
    backend: Backend,
    table: &TombstoneTable,
    subject: &[&str],
) -> Result<Option<bool>, ServiceError> {
    let filter: Vec<String> = table
        .subject
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = ${}", i + 1))
        .collect();
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let select = format!(
        "SELECT CAST(CASE WHEN {} THEN 1 ELSE 0 END AS BIGINT) FROM {} WHERE {}{lock}",
        table.tombstone_when,
        table.table,
        filter.join(" AND "),
    );
    let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(select));
    for value in subject {
        query = query.bind(*value);
    }
    Ok(query.fetch_optional(conn).await?.map(|flag| flag == 1))
}

fn check_arity(table: &TombstoneTable, subject: &[&str]) -> Result<(), ServiceError> {
    if subject.len() == table.subject.len() {
        Ok(())
    } else {
        Err(ServiceError::Internal(anyhow::anyhow!(
            "{} is keyed by {:?}, given {} values",
            table.table,
            table.subject,
            subject.len()
        )))
    }
}
