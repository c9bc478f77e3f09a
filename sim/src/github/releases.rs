//! The release data a scenario feeds the mock, and its rendering in GitHub's REST shape.
//!
//! Field names and nesting follow `GET /repos/{owner}/{repo}/releases/latest` as api.github.com
//! answers it, so a client parsing the mock parses the real service too.

use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One release as a scenario describes it. Ids, URLs and timestamps are added by the server.
#[derive(Clone, Debug)]
pub struct Release {
    /// The git tag, e.g. `1.10` or `v1.2.3`; never validated here, hostile tags are scenario data.
    pub tag_name: String,
    /// The release title shown on GitHub.
    pub name: String,
    /// Release notes (markdown).
    pub body: String,
    /// Drafts are hidden from clients that send no token, as on GitHub.
    pub draft: bool,
    /// Prereleases are never `latest`.
    pub prerelease: bool,
    /// Publication time, Unix seconds; orders releases (`latest` is the greatest).
    pub published_at: u64,
    /// Files attached to the release.
    pub assets: Vec<Asset>,
}

impl Release {
    /// A published, non-draft release with no notes, published at `published_at`.
    pub fn new(tag: &str, published_at: u64) -> Self {
        Self {
            tag_name: tag.to_owned(),
            name: tag.to_owned(),
            body: String::new(),
            draft: false,
            prerelease: false,
            published_at,
            assets: Vec::new(),
        }
    }

    /// Builder-style: attach an asset.
    pub fn with_asset(mut self, asset: Asset) -> Self {
        self.assets.push(asset);
        self
    }
}

/// A release file. The bytes are served as given; `size` and `digest` are derived from them.
#[derive(Clone, Debug)]
pub struct Asset {
    /// File name, the last segment of `browser_download_url`.
    pub name: String,
    /// MIME type announced in the JSON and on the download.
    pub content_type: String,
    /// The file contents.
    pub bytes: Bytes,
    /// Whether the JSON carries its `digest`; `false` renders `"digest": null`, as GitHub
    /// shows assets uploaded before it computed digests (June 2025).
    pub has_digest: bool,
}

impl Asset {
    /// An `application/octet-stream` asset.
    pub fn new(name: &str, bytes: impl Into<Bytes>) -> Self {
        Self {
            name: name.to_owned(),
            content_type: "application/octet-stream".to_owned(),
            bytes: bytes.into(),
            has_digest: true,
        }
    }

    /// Builder-style: shown without a `digest` (`null`), as an asset uploaded before GitHub
    /// computed digests.
    pub fn without_digest(mut self) -> Self {
        self.has_digest = false;
        self
    }

    /// `sha256:<hex>` as GitHub's `digest` field spells it.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(sha256_of(&self.bytes)))
    }
}

/// SHA-256 of an asset's bytes, computed once per buffer: every release JSON and every
/// download (its ETag) needs it, and a sweep serves a megabyte image hundreds of thousands of
/// times. The cache keeps a clone of each `Bytes` it knows, so its buffer cannot be freed and
/// its address reused by other contents while the entry lives.
pub(crate) fn sha256_of(bytes: &Bytes) -> [u8; 32] {
    type Memo = std::collections::HashMap<(usize, usize), (Bytes, [u8; 32])>;
    static MEMO: std::sync::OnceLock<std::sync::Mutex<Memo>> = std::sync::OnceLock::new();
    // Small buffers are cheaper to hash than to look up.
    if bytes.len() < 4096 {
        return Sha256::digest(bytes).into();
    }
    let key = (bytes.as_ptr() as usize, bytes.len());
    let memo = MEMO.get_or_init(Default::default);
    if let Some((_, digest)) = memo.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return *digest;
    }
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let mut memo = memo.lock().unwrap_or_else(|e| e.into_inner());
    // Bounded: a long test run publishes many images; forgetting them all costs one hash each.
    if memo.len() >= 64 {
        memo.clear();
    }
    memo.insert(key, (bytes.clone(), digest));
    digest
}

/// A release as stored by the server: the scenario's data plus the ids GitHub would assign.
#[derive(Clone, Debug)]
pub(crate) struct StoredRelease {
    pub id: u64,
    pub owner: String,
    pub repo: String,
    /// Insertion order breaks ties between equal `published_at`, so "published later" is total.
    pub seq: u64,
    pub release: Release,
    pub asset_ids: Vec<u64>,
}

/// What the JSON renderer needs besides the release: where the server is and which lies to tell.
pub(crate) struct Render<'a> {
    /// `http://host:port` without trailing slash, as the client reached us.
    pub base: &'a str,
    /// Added to every asset's `size` field ([`super::Fault::WrongSize`]).
    pub size_delta: i64,
    /// Replace every asset's `digest` with a wrong one ([`super::Fault::WrongHash`]).
    pub wrong_hash: bool,
}

/// The account that "uploaded" everything: GitHub Actions' bot, as for most CI-made releases.
fn user(base: &str) -> Value {
    let login = "github-actions[bot]";
    json!({
        "login": login,
        "id": 41898282,
        "node_id": "MDM6Qm90NDE4OTgyODI=",
        "avatar_url": format!("{base}/_avatars/in/15368?v=4"),
        "gravatar_id": "",
        "url": format!("{base}/users/{login}"),
        "html_url": format!("{base}/apps/github-actions"),
        "followers_url": format!("{base}/users/{login}/followers"),
        "following_url": format!("{base}/users/{login}/following{{/other_user}}"),
        "gists_url": format!("{base}/users/{login}/gists{{/gist_id}}"),
        "starred_url": format!("{base}/users/{login}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{base}/users/{login}/subscriptions"),
        "organizations_url": format!("{base}/users/{login}/orgs"),
        "repos_url": format!("{base}/users/{login}/repos"),
        "events_url": format!("{base}/users/{login}/events{{/privacy}}"),
        "received_events_url": format!("{base}/users/{login}/received_events"),
        "type": "Bot",
        "user_view_type": "public",
        "site_admin": false
    })
}

impl StoredRelease {
    /// The release object of the REST API.
    pub fn to_json(&self, r: &Render<'_>) -> Value {
        let (base, o, p, id) = (r.base, &self.owner, &self.repo, self.id);
        let rel = &self.release;
        let published = (!rel.draft).then(|| iso8601(rel.published_at));
        let assets: Vec<Value> = (0..rel.assets.len())
            .map(|i| self.asset_json(i, r))
            .collect();
        json!({
            "url": format!("{base}/repos/{o}/{p}/releases/{id}"),
            "assets_url": format!("{base}/repos/{o}/{p}/releases/{id}/assets"),
            "upload_url": format!("{base}/repos/{o}/{p}/releases/{id}/assets{{?name,label}}"),
            "html_url": format!("{base}/{o}/{p}/releases/tag/{}", rel.tag_name),
            "id": id,
            "author": user(base),
            "node_id": format!("RE_kwDOSim{id:08}"),
            "tag_name": rel.tag_name,
            "target_commitish": "main",
            "name": rel.name,
            "draft": rel.draft,
            "immutable": false,
            "prerelease": rel.prerelease,
            // A release is created a minute before it is published (CI builds, then publishes).
            "created_at": iso8601(rel.published_at.saturating_sub(60)),
            "updated_at": iso8601(rel.published_at),
            "published_at": published,
            "assets": assets,
            "tarball_url": format!("{base}/repos/{o}/{p}/tarball/{}", rel.tag_name),
            "zipball_url": format!("{base}/repos/{o}/{p}/zipball/{}", rel.tag_name),
            "body": rel.body,
        })
    }

    /// The asset object (inside a release, or alone at `/releases/assets/{id}`).
    pub fn asset_json(&self, index: usize, r: &Render<'_>) -> Value {
        let (base, o, p) = (r.base, &self.owner, &self.repo);
        let asset = &self.release.assets[index];
        let id = self.asset_ids[index];
        let real = asset.bytes.len() as i64;
        let size = real.saturating_add(r.size_delta).max(0);
        let digest = if !asset.has_digest {
            Value::Null
        } else if r.wrong_hash {
            // The hash of other bytes: well-formed, so only a client that checks it notices.
            let mut wrong = Sha256::new();
            wrong.update(b"not the asset");
            wrong.update(&asset.bytes);
            Value::from(format!("sha256:{}", hex::encode(wrong.finalize())))
        } else {
            Value::from(asset.digest())
        };
        let t = iso8601(self.release.published_at.saturating_sub(30));
        json!({
            "url": format!("{base}/repos/{o}/{p}/releases/assets/{id}"),
            "id": id,
            "node_id": format!("RA_kwDOSim{id:08}"),
            "name": asset.name,
            "label": "",
            "uploader": user(base),
            "content_type": asset.content_type,
            "state": "uploaded",
            "size": size,
            "digest": digest,
            "download_count": 0,
            "created_at": t,
            "updated_at": t,
            "browser_download_url": format!(
                "{base}/{o}/{p}/releases/download/{}/{}",
                self.release.tag_name, asset.name
            ),
        })
    }
}

/// Unix seconds as GitHub's `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso8601(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Unix seconds as an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(secs: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]; // 1970-01-01 was a Thursday
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian); avoids a date crate for one line.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse: days since 1970-01-01 of a civil date (Howard Hinnant's days-from-civil).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        for days in [0, 11_016, 19_710, 20_440, -1] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn http_dates_match_known_dates() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn iso8601_matches_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }
}
