//! Commits to an Iceberg REST catalog that iceberg-rust has no action for (a snapshot that
//! removes data files): the REST protocol's own commit, `POST .../tables/{table}` with the
//! snapshot to add and the requirement that the branch has not moved, which the catalog checks
//! and applies atomically (409 when another commit came first).

use iceberg::spec::{Snapshot, SnapshotReference, SnapshotRetention, MAIN_BRANCH};
use iceberg::{TableRequirement, TableUpdate};
use std::time::Duration;

/// Where and how to send commits: the tables endpoint of the namespace, as the catalog's
/// `/v1/config` shapes it (its `uri` and `prefix` overrides), and the bearer token.
#[derive(Debug)]
pub struct RestCommits {
    client: reqwest::Client,
    tables: String,
    token: Option<String>,
}

impl RestCommits {
    pub async fn connect(uri: &str, warehouse: Option<&str>, token: Option<&str>, namespace: &str) -> Result<Self, String> {
        let client =
            reqwest::Client::builder().timeout(Duration::from_secs(60)).build().map_err(|e| format!("REST catalog client: {e}"))?;
        let uri = uri.trim_end_matches('/');
        let mut req = client.get(format!("{uri}/v1/config"));
        if let Some(w) = warehouse {
            req = req.query(&[("warehouse", w)]);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| format!("cannot reach the REST catalog at {uri}: {e}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(format!("REST catalog at {uri}: GET /v1/config: {status}: {}", resp.text().await.unwrap_or_default()));
        }
        // {"defaults": {...}, "overrides": {...}}: an override wins over the client's setting,
        // which wins over a default.
        let config: serde_json::Value = resp.json().await.map_err(|e| format!("REST catalog at {uri}: bad /v1/config: {e}"))?;
        let get = |section: &str, k: &str| config.get(section).and_then(|s| s.get(k)).and_then(|v| v.as_str()).map(str::to_string);
        let setting = |k: &str| get("overrides", k).or_else(|| get("defaults", k)).map(|v| v.trim_matches('/').to_string());
        let base = get("overrides", "uri").map(|u| u.trim_end_matches('/').to_string()).unwrap_or_else(|| uri.to_string());
        let prefix = setting("prefix").filter(|p| !p.is_empty()).map(|p| format!("/{p}")).unwrap_or_default();
        Ok(RestCommits { client, tables: format!("{base}/v1{prefix}/namespaces/{namespace}/tables"), token: token.map(str::to_string) })
    }

    /// Makes `snapshot` the head of `table`'s main branch if the branch is still at `parent` and
    /// the table is still the one with `uuid`; false when either changed meanwhile.
    pub async fn add_snapshot(&self, table: &str, uuid: uuid::Uuid, parent: Option<i64>, snapshot: Snapshot) -> Result<bool, String> {
        let reference = SnapshotReference::new(snapshot.snapshot_id(), SnapshotRetention::branch(None, None, None));
        let requirements = vec![
            TableRequirement::UuidMatch { uuid },
            TableRequirement::RefSnapshotIdMatch { r#ref: MAIN_BRANCH.to_string(), snapshot_id: parent },
        ];
        let updates =
            vec![TableUpdate::AddSnapshot { snapshot }, TableUpdate::SetSnapshotRef { ref_name: MAIN_BRANCH.to_string(), reference }];
        let body = serde_json::json!({ "requirements": requirements, "updates": updates });
        let mut req = self.client.post(format!("{}/{}", self.tables, urlencode(table))).json(&body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| format!("REST catalog: commit to {table}: {e}"))?;
        match resp.status().as_u16() {
            200..=299 => Ok(true),
            409 => Ok(false),
            status => Err(format!("REST catalog: commit to {table}: {status}: {}", resp.text().await.unwrap_or_default())),
        }
    }
}

/// A path segment, percent-encoded (topic names hold only `[a-zA-Z0-9._-]`, so this is
/// belt and braces).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
