//! The lake: every topic is an Apache Iceberg table of Parquet files, in a catalog (iceberg's SQL
//! catalog, on SQLite in the data directory by default; an Iceberg REST catalog by
//! configuration) whose files live in the object store the data planes write their WAL objects
//! to, under `tables/`.
//!
//! The table of a topic is `sluice.<topic>`. Its schema ([`schema`]): `partition` (int),
//! `offset` (long), `timestamp` (timestamptz), `timestamp_type` (int: 0 CreateTime,
//! 1 LogAppendTime), `key` and `value` (binary, null when the record's is), `headers` (list of
//! `key` string / `value` binary). Partitioned by `partition` (identity) and sorted by `offset`,
//! so "this Kafka partition from this offset" reads one partition's files and skips every file
//! (and row group) whose offset bounds are below; the files' `timestamp` bounds make time ranges
//! cheap as well.
//!
//! [`compact`] fills the tables: it turns committed WAL chunks into Parquet files, commits them to
//! the table and swaps the index entries to point at the files' row groups, which the data
//! planes then serve fetches from.

pub mod compact;
mod rest;
mod retention;
mod rows;
mod sweep;

use iceberg::io::{FileIO, FileIOBuilder, StorageFactory};
use iceberg::spec::{
    ListType, NestedField, NullOrder, PrimitiveType, Schema, Snapshot, SortDirection, SortField, SortOrder, StructType,
    TableMetadataBuilder, Transform, Type, UnboundPartitionSpec, MAIN_BRANCH,
};
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, MetadataLocation, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::{RestCatalogBuilder, REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder, SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE};
use iceberg_storage_opendal::OpenDalStorageFactory;
use sluice_rpc::Topic;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// The namespace of every topic's table, and the catalog's name (pyiceberg's `SqlCatalog` must
/// be given the same name to see the tables).
pub const NAMESPACE: &str = "sluice";
/// Table property naming the topic id the table belongs to (a topic deleted and created again
/// under its name gets a new table).
const TOPIC_ID_PROP: &str = "sluice.topic-id";

/// The catalog that holds the tables.
#[derive(Debug, Clone)]
pub enum CatalogConfig {
    /// iceberg's SQL catalog: its database URL (`sqlite://PATH?mode=rwc`).
    Sql(String),
    /// An Iceberg REST catalog: its base URI (the part before `/v1`), the warehouse to ask it
    /// for, and the bearer token to send.
    Rest { uri: String, warehouse: Option<String>, token: Option<String> },
}

/// Where the lake is.
#[derive(Debug, Clone)]
pub struct LakeConfig {
    pub catalog: CatalogConfig,
    /// The object store's root URL: `file:///DIR` or `s3://BUCKET[/PREFIX]`, no trailing slash.
    pub store_root: String,
    /// FileIO properties (S3 endpoint, region, credentials).
    pub props: HashMap<String, String>,
}

impl LakeConfig {
    /// The lake on the same object store as the data planes: `store` as `--object-store` takes
    /// it (None: DATA_DIR/objects), the catalog `catalog` as `--catalog` takes it (None: a
    /// SQLite file in `data_dir`); a REST catalog's warehouse and token (`SLUICE_CATALOG_TOKEN`).
    pub fn from_flags(
        data_dir: &Path,
        store: Option<&str>,
        s3_endpoint: Option<&str>,
        s3_region: &str,
        catalog: Option<&str>,
        warehouse: Option<&str>,
    ) -> Result<Self, String> {
        let abs = |p: &Path| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
        let catalog = match catalog {
            None => {
                std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
                CatalogConfig::Sql(format!("sqlite://{}?mode=rwc", abs(&data_dir.join("catalog.db"))?.display()))
            }
            Some(u) if u.starts_with("sqlite://") => CatalogConfig::Sql(u.to_string()),
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                let uri = u.trim_end_matches('/').trim_end_matches("/v1").to_string();
                if uri.split("://").nth(1).is_none_or(str::is_empty) {
                    return Err(format!("--catalog {u}: no host"));
                }
                let token = std::env::var("SLUICE_CATALOG_TOKEN").ok().filter(|t| !t.is_empty());
                CatalogConfig::Rest { uri, warehouse: warehouse.map(str::to_string), token }
            }
            Some(u) => {
                return Err(format!(
                    "--catalog {u}: unknown scheme (use sqlite://PATH?mode=rwc or http(s)://HOST[:PORT][/PATH] of a REST catalog)"
                ))
            }
        };
        if warehouse.is_some() && !matches!(catalog, CatalogConfig::Rest { .. }) {
            return Err("--catalog-warehouse: only for a REST catalog (--catalog http(s)://...)".into());
        }
        let mut props = HashMap::new();
        let store_root = match store {
            None => format!("file://{}", abs(&data_dir.join("objects"))?.display()),
            Some(u) if u.starts_with("file://") => {
                let dir = &u["file://".len()..];
                if dir.is_empty() {
                    return Err(format!("--object-store {u}: no directory"));
                }
                format!("file://{}", abs(Path::new(dir))?.display().to_string().trim_end_matches('/'))
            }
            Some(u) if u.starts_with("s3://") => {
                let Some(endpoint) = s3_endpoint else {
                    return Err("--object-store s3://: --s3-endpoint is required".into());
                };
                let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                let (Some(access), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) else {
                    return Err("--object-store s3://: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into());
                };
                props.insert("s3.endpoint".into(), endpoint.trim_end_matches('/').to_string());
                props.insert("s3.region".into(), s3_region.to_string());
                props.insert("s3.access-key-id".into(), access);
                props.insert("s3.secret-access-key".into(), secret);
                props.insert("s3.path-style-access".into(), "true".into());
                let rest = u["s3://".len()..].trim_end_matches('/');
                if rest.is_empty() || rest.starts_with('/') {
                    return Err(format!("--object-store {u}: no bucket"));
                }
                format!("s3://{rest}")
            }
            Some(u) => return Err(format!("--object-store {u}: unknown scheme (use file://DIR or s3://BUCKET[/PREFIX])")),
        };
        Ok(LakeConfig { catalog, store_root, props })
    }

    fn local(&self) -> bool {
        self.store_root.starts_with("file://")
    }
}

/// The catalog, and the object store as files.
pub struct Lake {
    pub catalog: Box<dyn Catalog>,
    pub file_io: FileIO,
    /// How the commits iceberg-rust has no action for reach the catalog.
    commits: Commits,
    cfg: LakeConfig,
}

enum Commits {
    /// The SQL catalog's database: the metadata file is written here and swapped in.
    Sql(sqlx::SqlitePool),
    /// The REST catalog's commit endpoint: it writes the metadata file.
    Rest(rest::RestCommits),
}

impl Lake {
    /// Opens (creating when new) the catalog and its namespace.
    pub async fn open(cfg: LakeConfig) -> Result<Self, String> {
        let factory: Arc<dyn StorageFactory> = if cfg.local() {
            Arc::new(OpenDalStorageFactory::Fs)
        } else {
            Arc::new(OpenDalStorageFactory::S3 { customized_credential_load: None })
        };
        let mut props = cfg.props.clone();
        let (catalog, commits): (Box<dyn Catalog>, Commits) = match &cfg.catalog {
            CatalogConfig::Sql(uri) => {
                props.insert(SQL_CATALOG_PROP_URI.into(), uri.clone());
                props.insert(SQL_CATALOG_PROP_WAREHOUSE.into(), format!("{}/tables", cfg.store_root));
                props.insert(SQL_CATALOG_PROP_BIND_STYLE.into(), SqlBindStyle::QMark.to_string());
                let catalog = SqlCatalogBuilder::default()
                    .with_storage_factory(factory.clone())
                    .load(NAMESPACE, props)
                    .await
                    .map_err(|e| format!("cannot open the Iceberg catalog at {uri}: {}", compact::brief(&e)))?;
                let db = sqlx::SqlitePool::connect(uri).await.map_err(|e| format!("cannot open {uri}: {e}"))?;
                (Box::new(catalog), Commits::Sql(db))
            }
            CatalogConfig::Rest { uri, warehouse, token } => {
                let commits = rest::RestCommits::connect(uri, warehouse.as_deref(), token.as_deref(), NAMESPACE).await?;
                props.insert(REST_CATALOG_PROP_URI.into(), uri.clone());
                if let Some(w) = warehouse {
                    props.insert(REST_CATALOG_PROP_WAREHOUSE.into(), w.clone());
                }
                if let Some(t) = token {
                    props.insert("token".into(), t.clone());
                }
                let catalog = RestCatalogBuilder::default()
                    .with_storage_factory(factory.clone())
                    .load(NAMESPACE, props)
                    .await
                    .map_err(|e| format!("cannot open the Iceberg REST catalog at {uri}: {}", compact::brief(&e)))?;
                (Box::new(catalog), Commits::Rest(commits))
            }
        };
        let file_io = FileIOBuilder::new(factory).with_props(cfg.props.clone()).build();
        let ns = NamespaceIdent::new(NAMESPACE.into());
        if !catalog.namespace_exists(&ns).await.map_err(|e| format!("Iceberg catalog: {}", compact::brief(&e)))? {
            catalog.create_namespace(&ns, HashMap::new()).await.map_err(|e| format!("Iceberg catalog: {}", compact::brief(&e)))?;
        }
        Ok(Lake { catalog, file_io, commits, cfg })
    }

    /// Where an object of the object store is: its URL, and the position of its bytes there
    /// (the local store keeps objects inside segment files, `seg/<file>@<offset>`).
    pub fn locate(&self, key: &str) -> (String, u64) {
        let root = &self.cfg.store_root;
        if self.cfg.local() {
            if let Some((name, at)) = key.strip_prefix("seg/").and_then(|k| k.rsplit_once('@')) {
                return (format!("{root}/seg/{name}"), at.parse().unwrap_or(0));
            }
            if !key.contains('/') {
                return (format!("{root}/wal/{key}"), 0);
            }
        }
        (format!("{root}/{key}"), 0)
    }

    /// The object-store key of a file of the lake (what data planes read it by).
    pub fn key_of(&self, url: &str) -> Option<String> {
        url.strip_prefix(&self.cfg.store_root).map(|k| k.trim_start_matches('/').to_string())
    }

    /// Makes `snapshot` (its manifests written) the head of `table`'s main branch, if the table
    /// is still as loaded; false when another commit came first.
    pub async fn commit_snapshot(&self, table: &Table, snapshot: Snapshot) -> Result<bool, String> {
        let meta = table.metadata();
        match &self.commits {
            Commits::Rest(rest) => {
                let parent = meta.current_snapshot().map(|s| s.snapshot_id());
                rest.add_snapshot(table.identifier().name(), meta.uuid(), parent, snapshot).await
            }
            Commits::Sql(db) => {
                let brief = |e: iceberg::Error| compact::brief(&e);
                let current = table.metadata_location().ok_or("table has no metadata location")?.to_string();
                let built = TableMetadataBuilder::new_from_metadata(meta.clone(), Some(current.clone()))
                    .set_branch_snapshot(snapshot, MAIN_BRANCH)
                    .and_then(|b| b.build())
                    .map_err(brief)?;
                let next = MetadataLocation::from_str(&current).map_err(brief)?.with_next_version().with_new_metadata(&built.metadata);
                built.metadata.write_to(table.file_io(), &next).await.map_err(brief)?;
                Self::swap_metadata(db, table.identifier().name(), &current, &next.to_string()).await.map_err(|e| format!("catalog: {e}"))
            }
        }
    }

    /// Points the SQL catalog's record of table `name` at metadata file `to`, if it still names
    /// `from` (the compare-and-set the SQL catalog's own commits make); false when it does not.
    async fn swap_metadata(db: &sqlx::SqlitePool, name: &str, from: &str, to: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?",
        )
        .bind(to)
        .bind(from)
        .bind(NAMESPACE)
        .bind(NAMESPACE)
        .bind(name)
        .bind(from)
        .execute(db)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    fn ident(topic: &str) -> TableIdent {
        TableIdent::new(NamespaceIdent::new(NAMESPACE.into()), topic.to_string())
    }

    /// The table of `topic`, created when missing; one left by an earlier topic of the same
    /// name is dropped first (its files are let go of with that topic's index).
    pub async fn table(&self, topic: &Topic) -> iceberg::Result<Table> {
        let ident = Self::ident(&topic.name);
        let id = hex(&topic.topic_id);
        if self.catalog.table_exists(&ident).await? {
            let table = self.catalog.load_table(&ident).await?;
            if table.metadata().properties().get(TOPIC_ID_PROP) == Some(&id) {
                return Ok(table);
            }
            self.catalog.drop_table(&ident).await?;
        }
        let creation = TableCreation::builder()
            .name(topic.name.clone())
            // Named by (half) the topic id, not its name: names may be 249 characters, and some
            // S3-compatible servers cap keys far below S3's 1024 bytes.
            .location(format!("{}/tables/{}", self.cfg.store_root, &id[..16.min(id.len())]))
            .schema(schema()?)
            .partition_spec(UnboundPartitionSpec::builder().add_partition_field(1, "partition", Transform::Identity)?.build())
            .sort_order(
                SortOrder::builder()
                    .with_order_id(1)
                    .with_sort_field(
                        SortField::builder()
                            .source_id(2)
                            .direction(SortDirection::Ascending)
                            .null_order(NullOrder::First)
                            .transform(Transform::Identity)
                            .build(),
                    )
                    .build_unbound()?,
            )
            .properties([(TOPIC_ID_PROP.to_string(), id)])
            .build();
        self.catalog.create_table(&NamespaceIdent::new(NAMESPACE.into()), creation).await
    }

    /// Makes the catalog's table of `topic` the one whose metadata file is `location` (as the
    /// metadata store records it), unless the catalog's own is as new or newer.
    pub async fn adopt(&self, topic: &Topic, location: &str) -> iceberg::Result<()> {
        let ident = Self::ident(&topic.name);
        if self.catalog.table_exists(&ident).await? {
            let table = self.catalog.load_table(&ident).await?;
            let mine = table.metadata_location().unwrap_or_default();
            let same_topic = table.metadata().properties().get(TOPIC_ID_PROP) == Some(&hex(&topic.topic_id));
            if same_topic && (mine == location || version(mine) >= version(location)) {
                return Ok(());
            }
            self.catalog.drop_table(&ident).await?;
        }
        tracing::info!(table = %ident, metadata = %location, "table taken from the metadata store into the catalog");
        self.catalog.register_table(&ident, location.to_string()).await.map(|_| ())
    }

    /// Drops the tables whose topic is gone (not in `live`, by name and id).
    pub async fn drop_orphan_tables(&self, live: &HashMap<String, String>) -> iceberg::Result<Vec<String>> {
        let mut dropped = Vec::new();
        for ident in self.catalog.list_tables(&NamespaceIdent::new(NAMESPACE.into())).await? {
            let keep = match live.get(ident.name()) {
                Some(id) => {
                    let table = self.catalog.load_table(&ident).await?;
                    table.metadata().properties().get(TOPIC_ID_PROP) == Some(id)
                }
                None => false,
            };
            if !keep {
                self.catalog.drop_table(&ident).await?;
                dropped.push(ident.name().to_string());
            }
        }
        Ok(dropped)
    }
}

/// The version of a metadata file (`<location>/metadata/00007-<uuid>.metadata.json`: 7).
fn version(url: &str) -> i64 {
    let name = url.rsplit('/').next().unwrap_or_default();
    name.split('-').next().and_then(|v| v.parse().ok()).unwrap_or(-1)
}

/// A topic id as the tables name it.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The schema of every topic's table (field ids are part of the format: never renumber).
pub fn schema() -> iceberg::Result<Schema> {
    let header = StructType::new(vec![
        NestedField::required(9, "key", Type::Primitive(PrimitiveType::String)).into(),
        NestedField::optional(10, "value", Type::Primitive(PrimitiveType::Binary)).into(),
    ]);
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            NestedField::required(1, "partition", Type::Primitive(PrimitiveType::Int)).into(),
            NestedField::required(2, "offset", Type::Primitive(PrimitiveType::Long)).into(),
            NestedField::required(3, "timestamp", Type::Primitive(PrimitiveType::Timestamptz)).into(),
            NestedField::required(4, "timestamp_type", Type::Primitive(PrimitiveType::Int)).into(),
            NestedField::optional(5, "key", Type::Primitive(PrimitiveType::Binary)).into(),
            NestedField::optional(6, "value", Type::Primitive(PrimitiveType::Binary)).into(),
            NestedField::optional(7, "headers", Type::List(ListType::new(NestedField::list_element(8, Type::Struct(header), true).into())))
                .into(),
        ])
        .build()
}
