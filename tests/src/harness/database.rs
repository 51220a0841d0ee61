//! A collector's database opened directly, as whoever runs the collector
//! could: tests edit stored rows behind the collector's back (tampering,
//! schemas from older versions). A SQLite file path or a postgres:// URL;
//! statements use `$1`-style parameters on both.

use tokio_postgres::types::ToSql;

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(tokio::runtime::Runtime, tokio_postgres::Client),
}

/// An open database.
pub struct Database(Inner);

/// A statement parameter.
pub enum Value<'a> {
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl Database {
    pub fn open(database: &str) -> Database {
        if database.starts_with("postgres") {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let client = rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(database, tokio_postgres::NoTls)
                    .await
                    .expect("connecting to PostgreSQL");
                tokio::spawn(conn);
                client
            });
            Database(Inner::Postgres(rt, client))
        } else {
            let c = rusqlite::Connection::open(database).expect("opening the SQLite database");
            c.busy_timeout(std::time::Duration::from_secs(10))
                .expect("busy timeout");
            Database(Inner::Sqlite(c))
        }
    }

    /// Runs a statement; returns the rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> u64 {
        match &mut self.0 {
            Inner::Sqlite(c) => c
                .execute(&sql.replace('$', "?"), sqlite_params(params))
                .unwrap_or_else(|e| panic!("{sql}: {e}")) as u64,
            Inner::Postgres(rt, c) => {
                let p = pg_values(params);
                rt.block_on(c.execute(sql, &pg_refs(&p)))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }

    /// The first column of the first row a query returns.
    pub fn one<T>(&mut self, sql: &str, params: &[Value<'_>]) -> T
    where
        T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>,
    {
        match &mut self.0 {
            Inner::Sqlite(c) => c
                .query_row(&sql.replace('$', "?"), sqlite_params(params), |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Inner::Postgres(rt, c) => {
                let p = pg_values(params);
                rt.block_on(c.query_one(sql, &pg_refs(&p)))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .get(0)
            }
        }
    }
}

fn sqlite_params(params: &[Value<'_>]) -> rusqlite::ParamsFromIter<Vec<rusqlite::types::Value>> {
    rusqlite::params_from_iter(params.iter().map(sqlite_value).collect::<Vec<_>>())
}

fn pg_refs(p: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn sqlite_value(v: &Value<'_>) -> rusqlite::types::Value {
    match v {
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(s) => rusqlite::types::Value::Text((*s).to_owned()),
        Value::Bytes(b) => rusqlite::types::Value::Blob(b.to_vec()),
    }
}

fn pg_values(params: &[Value<'_>]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    params
        .iter()
        .map(|v| -> Box<dyn ToSql + Sync + Send> {
            match v {
                Value::Int(i) => Box::new(*i),
                Value::Text(s) => Box::new((*s).to_owned()),
                Value::Bytes(b) => Box::new(b.to_vec()),
            }
        })
        .collect()
}
