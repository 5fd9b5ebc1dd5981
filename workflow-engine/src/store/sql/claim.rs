//! The claim (docs/architecture.md, "Recovery"): which rows are due or orphaned, and how a
//! batch of them is taken in one transaction. What a claim journals is the planner's decision,
//! passed in by the engine.

use sagaflow_server::Backend;

use super::{
    SqlSagaStore,
    rows::{SagaRow, insert_entries, park_unreadable, update_row},
};
use crate::{
    journal,
    state::{SagaId, SagaState},
    store::{ClaimPlan, StoreError},
};

// A lease counts as expired only when it expired by the caller's clock *and* by the database's.
// Released and due, or orphaned (whatever its next attempt time).
pub(super) const DUE_SQLITE: &str = concat!(
    " FROM sagas WHERE status IN ('RUNNING', 'COMPENSATING') \
     AND ((lease_owner IS NULL AND next_attempt_at <= $1) OR lease_expires_at < MIN($1, ",
    sqlite_now!(),
    "))"
);

pub(super) const DUE_POSTGRES: &str = concat!(
    " FROM sagas WHERE status IN ('RUNNING', 'COMPENSATING') \
     AND ((lease_owner IS NULL AND next_attempt_at <= $1) OR lease_expires_at < LEAST($1, ",
    postgres_now!(),
    "))"
);

/// `(definition_name = $k AND definition_version = $k+1) OR …` for `count` definitions whose
/// parameters start at `$first`; `1 = 1` for none (every definition).
pub(super) fn definitions_filter(first: usize, count: usize) -> String {
    if count == 0 {
        return "1 = 1".to_owned();
    }
    let terms: Vec<String> = (0..count)
        .map(|i| {
            let name = first + 2 * i;
            format!(
                "(definition_name = ${name} AND definition_version = ${})",
                name + 1
            )
        })
        .collect();
    format!("({})", terms.join(" OR "))
}

const CLAIM_ONE_SQLITE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM sagas WHERE id = $2 AND status IN ('RUNNING', 'COMPENSATING') \
     AND (lease_owner IS NULL OR lease_expires_at < MIN($1, ",
    sqlite_now!(),
    "))"
);

const CLAIM_ONE_POSTGRES: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM sagas WHERE id = $2 AND status IN ('RUNNING', 'COMPENSATING') \
     AND (lease_owner IS NULL OR lease_expires_at < LEAST($1, ",
    postgres_now!(),
    ")) FOR UPDATE SKIP LOCKED"
);

impl SqlSagaStore {
    pub(super) async fn claim_rows(
        &self,
        id: Option<SagaId>,
        now: i64,
        limit: u32,
        definitions: &[(String, u32)],
        plan: ClaimPlan<'_>,
    ) -> Result<Vec<SagaState>, StoreError> {
        let backend = self.db.backend();
        let due = match backend {
            Backend::Postgres => DUE_POSTGRES,
            Backend::Sqlite => DUE_SQLITE,
        };
        let filter = definitions_filter(3, definitions.len());
        if backend == Backend::Sqlite && id.is_none() {
            // Look before taking SQLite's write lock: most polls find nothing.
            let sql = format!("SELECT id{due} AND {filter} LIMIT $2");
            let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(1_i64);
            for (name, version) in definitions {
                query = query.bind(name.clone()).bind(i64::from(*version));
            }
            if query.fetch_optional(self.db.pool()).await?.is_none() {
                return Ok(Vec::new());
            }
        }
        let mut tx = self.db.begin().await?;
        let rows: Vec<SagaRow> = match (backend, id) {
            (_, None) => {
                let lock = match backend {
                    Backend::Postgres => " FOR UPDATE SKIP LOCKED",
                    Backend::Sqlite => "",
                };
                let sql = format!(
                    concat!(
                        "SELECT ",
                        columns!(),
                        "{} AND {} ORDER BY next_attempt_at LIMIT $2{}"
                    ),
                    due, filter, lock
                );
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(i64::from(limit));
                for (name, version) in definitions {
                    query = query.bind(name.clone()).bind(i64::from(*version));
                }
                query.fetch_all(&mut *tx).await?
            }
            (Backend::Postgres, Some(id)) => {
                sqlx::query_as(CLAIM_ONE_POSTGRES)
                    .bind(now)
                    .bind(id.to_string())
                    .fetch_all(&mut *tx)
                    .await?
            }
            (Backend::Sqlite, Some(id)) => {
                sqlx::query_as(CLAIM_ONE_SQLITE)
                    .bind(now)
                    .bind(id.to_string())
                    .fetch_all(&mut *tx)
                    .await?
            }
        };
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let mut claimed = Vec::with_capacity(rows.len());
        let mut entries = Vec::new();
        for row in rows {
            // Row by row: one row that does not decode must not stop every other claim.
            let (raw_id, raw_seq) = (row.id.clone(), row.last_seq);
            let state = match row.into_state() {
                Ok(state) => state,
                Err(err) => {
                    park_unreadable(&mut tx, &raw_id, raw_seq, now, &err).await?;
                    continue;
                }
            };
            let events = plan(&state);
            let (next, new_entries) = journal::append(&state, now, events)?;
            if update_row(&mut tx, &next, state.fencing_token, state.last_seq).await? {
                entries.extend(new_entries);
                claimed.push(next);
            }
        }
        insert_entries(&mut tx, &entries).await?;
        tx.commit().await?;
        self.committed();
        Ok(claimed)
    }
}
