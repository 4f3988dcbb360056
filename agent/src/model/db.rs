//! Database and cache calls on the floor: the product and what a request
//! asked for, as every database protocol slice records them
//! ([`super::call::Detail::Db`]). Nothing here holds a value: query text is
//! sanitized before it gets here.

/// Database or cache product, as `db.system.name` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DbSystem {
    /// PostgreSQL.
    Postgresql,
    /// MySQL.
    Mysql,
    /// MariaDB (told from MySQL by its server greeting).
    Mariadb,
    /// Redis (or a RESP-compatible server).
    Redis,
    /// memcached.
    Memcached,
}

impl DbSystem {
    /// `db.system.name` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgresql => "postgresql",
            Self::Mysql => "mysql",
            Self::Mariadb => "mariadb",
            Self::Redis => "redis",
            Self::Memcached => "memcached",
        }
    }
}

/// What a request asked for, with nothing of its values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbRequest {
    /// `db.operation.name` (`SELECT`, `GET`...).
    pub operation: Option<String>,
    /// `db.collection.name`: the one table, when it reads plainly.
    pub collection: Option<String>,
    /// `db.query.summary` (`SELECT orders`).
    pub summary: Option<String>,
    /// `db.query.text`, literals and arguments replaced by `?`. `None` when
    /// the text was not wholly captured.
    pub query_text: Option<String>,
    /// `db.namespace` (database name; Redis: the db index).
    pub namespace: Option<String>,
}

/// A database or cache call's own facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbCall {
    /// Product.
    pub system: DbSystem,
    /// What was asked.
    pub request: DbRequest,
}
