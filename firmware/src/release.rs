//! GitHub's release JSON, parsed while it streams in.
//!
//! The core asks `GET {api_base}/repos/{owner}/{repo}/releases/latest` (or
//! `/releases` when prereleases are allowed: `latest` never returns one) and
//! feeds the response body here chunk by chunk. A release object has dozens
//! of fields and a `body` that can be tens of kilobytes of Markdown; the
//! parser keeps only what the update needs, in fixed buffers:
//!
//! | kept                          | from                                        |
//! |-------------------------------|---------------------------------------------|
//! | tag (≤ 32 bytes)              | `tag_name`                                  |
//! | draft / prerelease flags      | `draft`, `prerelease`                       |
//! | asset size                    | `assets[i].size` where `name` is ours        |
//! | download URL (≤ 2,048 bytes)  | `assets[i].browser_download_url`            |
//! | API asset URL (≤ 2,048 bytes) | `assets[i].url`                             |
//! | SHA-256                       | `assets[i].digest` (`"sha256:<64 hex>"`)     |
//!
//! Fixed memory: [`RELEASE_VALUE_BUF`] bytes of value buffer plus the
//! tokenizer's key stack, whatever the size of the response.

use crate::json::{JsonError, Path, Segment, Token, Tokenizer};
use crate::version::{MAX_TAG_LEN, Version, VersionError};
use core::fmt;
use heapless::String;

/// The tokenizer's value buffer for release JSON: the longest URL we keep.
pub const RELEASE_VALUE_BUF: usize = MAX_URL_LEN;
/// Longest URL kept, anywhere in the core.
///
/// Sized for real URLs, not for our mock's: GitHub answers a download with a
/// 302 to a signed asset-host URL (`release-assets.githubusercontent.com/…?sp=…&sig=…&jwt=…`
/// or the older `objects.githubusercontent.com/…?X-Amz-…`) of 700 to 1,200 bytes, and
/// `browser_download_url` itself can pass 256 bytes (a 100-byte repository name and a
/// 128-byte asset name).
pub const MAX_URL_LEN: usize = 2048;

/// A URL as the core stores it.
pub type Url = String<MAX_URL_LEN>;

/// The asset the board will install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetInfo {
    /// Size in bytes, as GitHub reports it.
    pub size: u32,
    /// `browser_download_url`: redirects to the asset host.
    pub download_url: Url,
    /// `url`: the API asset URL (needs `Accept: application/octet-stream`).
    pub api_url: Url,
    /// The SHA-256 from `digest`, when GitHub provides one.
    pub sha256: Option<[u8; 32]>,
    /// `id`: GitHub's asset id (0 when absent). Replacing an asset gives it a new id.
    pub id: u64,
    /// `updated_at` as written (empty when absent): changes when the asset is re-uploaded.
    pub updated_at: String<MAX_STAMP_LEN>,
}

/// Longest `updated_at` kept (`2026-11-27T12:09:33Z` is 20 bytes).
pub const MAX_STAMP_LEN: usize = 24;

/// The release chosen for installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedRelease {
    /// The tag, as written.
    pub tag: String<MAX_TAG_LEN>,
    /// The tag's version.
    pub version: Version,
    /// True for a prerelease (only chosen when the policy allows it).
    pub prerelease: bool,
    /// The configured asset of this release.
    pub asset: AssetInfo,
}

/// Why a release response cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseError {
    /// Not JSON, or cut short.
    Syntax(JsonError),
    /// The response is neither a release object nor a list of them.
    NotARelease,
    /// A field every release has is absent.
    Missing(&'static str),
    /// A field has the wrong JSON type.
    WrongType(&'static str),
    /// A string field is longer than the board keeps.
    TooLong(&'static str),
    /// `assets[].size` is negative, fractional or beyond 4 GiB.
    BadSize,
    /// `assets[].digest` is not `sha256:` and 64 hex digits.
    BadDigest,
    /// The tag is not a version.
    BadTag {
        /// The tag as received (cut to 32 bytes).
        tag: String<MAX_TAG_LEN>,
        /// Why it does not parse.
        error: VersionError,
    },
    /// The release is a draft or a prerelease the policy does not allow.
    NotEligible,
    /// The list holds no release the policy allows.
    NoEligibleRelease,
    /// The release has no asset of the configured name.
    AssetMissing {
        /// The release's tag.
        tag: String<MAX_TAG_LEN>,
    },
}

impl From<JsonError> for ReleaseError {
    fn from(e: JsonError) -> Self {
        ReleaseError::Syntax(e)
    }
}

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseError::Syntax(e) => write!(f, "release JSON: {e}"),
            ReleaseError::NotARelease => f.write_str("response is not a release"),
            ReleaseError::Missing(field) => write!(f, "release has no `{field}`"),
            ReleaseError::WrongType(field) => {
                write!(f, "release field `{field}` has the wrong type")
            }
            ReleaseError::TooLong(field) => write!(f, "release field `{field}` is too long"),
            ReleaseError::BadSize => f.write_str("asset size is not a size"),
            ReleaseError::BadDigest => f.write_str("asset digest is not sha256:<64 hex digits>"),
            ReleaseError::BadTag { tag, error } => {
                write!(f, "tag `{tag}` is not a version: {error}")
            }
            ReleaseError::NotEligible => f.write_str("release is a draft or a prerelease"),
            ReleaseError::NoEligibleRelease => f.write_str("no release fits the update policy"),
            ReleaseError::AssetMissing { tag } => {
                write!(f, "release {tag} has no asset of the configured name")
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct AssetDraft {
    /// The first malformed field: it only matters if this turns out to be our asset.
    error: Option<ReleaseError>,
    name_matches: Option<bool>,
    size: Option<u32>,
    download_url: Option<Url>,
    api_url: Option<Url>,
    sha256: Option<[u8; 32]>,
    id: Option<u64>,
    updated_at: Option<String<MAX_STAMP_LEN>>,
}

#[derive(Clone, Debug, Default)]
struct ReleaseDraft {
    tag: Option<String<MAX_TAG_LEN>>,
    tag_error: Option<VersionError>,
    /// A field of this release was malformed: in a list, the release is skipped.
    broken: Option<ReleaseError>,
    draft: bool,
    prerelease: bool,
    asset: Option<AssetInfo>,
}

/// Streams a release (or a list of releases) and selects what to install.
pub struct ReleaseParser {
    tokenizer: Tokenizer<RELEASE_VALUE_BUF>,
    state: ParseState,
}

struct ParseState {
    asset_name: String<128>,
    allow_prereleases: bool,
    /// Path depth of a release's own fields: 1 for `/latest`, 2 for `/releases`.
    base: Option<usize>,
    release: ReleaseDraft,
    asset: AssetDraft,
    best: Option<SelectedRelease>,
    /// The first problem found in a single-release response.
    first_error: Option<ReleaseError>,
    releases_seen: u32,
}

impl ReleaseParser {
    /// A parser selecting the asset `asset_name`.
    pub fn new(asset_name: &str, allow_prereleases: bool) -> Self {
        let mut name = String::new();
        // Config limits the asset name to 128 bytes, the size of this buffer.
        let _ = name.push_str(asset_name);
        ReleaseParser {
            tokenizer: Tokenizer::new(),
            state: ParseState {
                asset_name: name,
                allow_prereleases,
                base: None,
                release: ReleaseDraft::default(),
                asset: AssetDraft::default(),
                best: None,
                first_error: None,
                releases_seen: 0,
            },
        }
    }

    /// Feeds the next piece of the response body.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), ReleaseError> {
        let state = &mut self.state;
        self.tokenizer
            .push(chunk, &mut |path: &Path<'_>, token: Token<'_>| {
                state.accept(path, token)
            })
    }

    /// Ends the body and returns the release to install.
    pub fn finish(mut self) -> Result<SelectedRelease, ReleaseError> {
        let state = &mut self.state;
        self.tokenizer
            .finish(&mut |path: &Path<'_>, token: Token<'_>| state.accept(path, token))?;
        match (self.state.base, self.state.best, self.state.first_error) {
            (Some(1), _, Some(error)) => Err(error),
            (Some(1), Some(best), None) => Ok(best),
            (Some(2), Some(best), _) => Ok(best),
            (Some(2), None, _) => Err(ReleaseError::NoEligibleRelease),
            _ => Err(ReleaseError::NotARelease),
        }
    }
}

fn keep<const M: usize>(field: &'static str, token: Token<'_>) -> Result<String<M>, ReleaseError> {
    match token {
        Token::Str(t) if t.truncated || t.value.len() > M => Err(ReleaseError::TooLong(field)),
        Token::Str(t) => {
            let mut s = String::new();
            let _ = s.push_str(t.value);
            Ok(s)
        }
        _ => Err(ReleaseError::WrongType(field)),
    }
}

fn flag(field: &'static str, token: Token<'_>) -> Result<bool, ReleaseError> {
    match token {
        Token::Bool(b) => Ok(b),
        _ => Err(ReleaseError::WrongType(field)),
    }
}

fn parse_digest(token: Token<'_>) -> Result<Option<[u8; 32]>, ReleaseError> {
    let text = match token {
        Token::Null => return Ok(None),
        Token::Str(t) if !t.truncated => t.value,
        _ => return Err(ReleaseError::BadDigest),
    };
    let hex = text
        .strip_prefix("sha256:")
        .ok_or(ReleaseError::BadDigest)?;
    if hex.len() != 64 {
        return Err(ReleaseError::BadDigest);
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char)
            .to_digit(16)
            .ok_or(ReleaseError::BadDigest)?;
        let lo = (pair[1] as char)
            .to_digit(16)
            .ok_or(ReleaseError::BadDigest)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(Some(out))
}

impl ParseState {
    fn accept(&mut self, path: &Path<'_>, token: Token<'_>) -> Result<(), ReleaseError> {
        let base = match self.base {
            Some(base) => base,
            None => {
                self.base = Some(match token {
                    Token::StartObject => 1,
                    Token::StartArray => 2,
                    _ => return Err(ReleaseError::NotARelease),
                });
                return Ok(());
            }
        };
        if base == 2 && path.len() == 1 {
            // An element of the release list starts or ends.
            return match token {
                Token::StartObject => {
                    self.release = ReleaseDraft::default();
                    Ok(())
                }
                Token::EndObject => {
                    self.end_release();
                    Ok(())
                }
                _ => Err(ReleaseError::NotARelease),
            };
        }
        if path.is_empty() {
            // Only the closing bracket of the document itself arrives at the root.
            if base == 1 {
                self.end_release();
            }
            return Ok(());
        }
        if path.len() < base {
            return Err(ReleaseError::NotARelease);
        }
        // Errors inside one release of a list disqualify that release, not the list.
        let result = self.release_field(path, base, token);
        match result {
            Err(e) if base == 2 => {
                self.release.broken.get_or_insert(e);
                Ok(())
            }
            other => other,
        }
    }

    fn release_field(
        &mut self,
        path: &Path<'_>,
        base: usize,
        token: Token<'_>,
    ) -> Result<(), ReleaseError> {
        let key = match path.segment(base - 1) {
            Some(Segment::Key(k)) => k,
            _ => return Err(ReleaseError::NotARelease),
        };
        if path.len() == base {
            match key {
                "tag_name" => {
                    let tag = match token {
                        Token::Str(t) if t.truncated || t.value.len() > MAX_TAG_LEN => {
                            let mut cut = String::new();
                            let end = (0..=MAX_TAG_LEN)
                                .rev()
                                .find(|&i| t.value.is_char_boundary(i))
                                .unwrap_or(0);
                            let _ = cut.push_str(&t.value[..end]);
                            self.release.tag_error = Some(VersionError::TooLong);
                            cut
                        }
                        _ => keep::<MAX_TAG_LEN>("tag_name", token)?,
                    };
                    if self.release.tag_error.is_none() {
                        self.release.tag_error = Version::parse(&tag).err();
                    }
                    self.release.tag = Some(tag);
                }
                "draft" => self.release.draft = flag("draft", token)?,
                "prerelease" => self.release.prerelease = flag("prerelease", token)?,
                "assets" if !matches!(token, Token::StartArray | Token::EndArray) => {
                    return Err(ReleaseError::WrongType("assets"));
                }
                _ => {}
            }
            return Ok(());
        }
        if key != "assets" {
            return Ok(()); // author{…}, reactions{…} and the like.
        }
        if path.len() == base + 1 {
            // An asset object starts or ends.
            match token {
                Token::StartObject => self.asset = AssetDraft::default(),
                Token::EndObject => self.end_asset()?,
                _ => return Err(ReleaseError::WrongType("assets[]")),
            }
            return Ok(());
        }
        if path.len() != base + 2 {
            return Ok(()); // uploader{…}
        }
        let Some(Segment::Key(field)) = path.segment(base + 1) else {
            return Ok(());
        };
        match field {
            "name" => {
                let matches = matches!(token, Token::Str(t) if !t.truncated && t.value == self.asset_name.as_str());
                if !matches!(token, Token::Str(_)) {
                    return Err(ReleaseError::WrongType("assets[].name"));
                }
                self.asset.name_matches = Some(matches);
            }
            _ => {
                // Other assets may carry fields we would refuse (a long URL, a future digest
                // algorithm): remember the problem, raise it only for the configured asset.
                if let Err(e) = self.asset_field(field, token) {
                    self.asset.error.get_or_insert(e);
                }
            }
        }
        Ok(())
    }

    fn asset_field(&mut self, field: &str, token: Token<'_>) -> Result<(), ReleaseError> {
        match field {
            "size" => {
                let Token::Number(n) = token else {
                    return Err(ReleaseError::WrongType("assets[].size"));
                };
                self.asset.size = Some(n.parse::<u32>().map_err(|_| ReleaseError::BadSize)?);
            }
            "browser_download_url" => {
                self.asset.download_url =
                    Some(keep::<MAX_URL_LEN>("assets[].browser_download_url", token)?)
            }
            "url" => self.asset.api_url = Some(keep::<MAX_URL_LEN>("assets[].url", token)?),
            "digest" => self.asset.sha256 = parse_digest(token)?,
            "id" => {
                let Token::Number(n) = token else {
                    return Err(ReleaseError::WrongType("assets[].id"));
                };
                self.asset.id = Some(
                    n.parse::<u64>()
                        .map_err(|_| ReleaseError::WrongType("assets[].id"))?,
                );
            }
            "updated_at" => {
                self.asset.updated_at = match token {
                    Token::Null => None,
                    _ => Some(keep::<MAX_STAMP_LEN>("assets[].updated_at", token)?),
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn end_asset(&mut self) -> Result<(), ReleaseError> {
        let asset = core::mem::take(&mut self.asset);
        if asset.name_matches != Some(true) {
            return Ok(());
        }
        if let Some(e) = asset.error {
            return Err(e);
        }
        let size = asset.size.ok_or(ReleaseError::Missing("assets[].size"))?;
        let download_url = asset
            .download_url
            .ok_or(ReleaseError::Missing("assets[].browser_download_url"))?;
        let api_url = asset.api_url.unwrap_or_default();
        self.release.asset = Some(AssetInfo {
            size,
            download_url,
            api_url,
            sha256: asset.sha256,
            id: asset.id.unwrap_or(0),
            updated_at: asset.updated_at.unwrap_or_default(),
        });
        Ok(())
    }

    fn end_release(&mut self) {
        self.releases_seen += 1;
        let release = core::mem::take(&mut self.release);
        let outcome = self.judge(release);
        match outcome {
            Ok(candidate) => {
                if self
                    .best
                    .as_ref()
                    .is_none_or(|best| candidate.version > best.version)
                {
                    self.best = Some(candidate);
                }
            }
            Err(e) => {
                if self.first_error.is_none() {
                    self.first_error = Some(e);
                }
            }
        }
    }

    fn judge(&self, release: ReleaseDraft) -> Result<SelectedRelease, ReleaseError> {
        if let Some(e) = release.broken {
            return Err(e);
        }
        let tag = release.tag.ok_or(ReleaseError::Missing("tag_name"))?;
        if let Some(error) = release.tag_error {
            return Err(ReleaseError::BadTag { tag, error });
        }
        let version = Version::parse(&tag).map_err(|error| ReleaseError::BadTag {
            tag: tag.clone(),
            error,
        })?;
        if release.draft || (release.prerelease && !self.allow_prereleases) {
            return Err(ReleaseError::NotEligible);
        }
        let asset = release
            .asset
            .ok_or_else(|| ReleaseError::AssetMissing { tag: tag.clone() })?;
        Ok(SelectedRelease {
            tag,
            version,
            prerelease: release.prerelease,
            asset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::String as StdString;

    fn asset(name: &str, size: &str, digest: &str) -> StdString {
        format!(
            r#"{{"url":"https://api.github.com/repos/acme/t/releases/assets/9","id":9,"node_id":"RA_x","name":"{name}",
            "label":null,"uploader":{{"login":"ci","id":1,"type":"Bot","site_admin":false}},"content_type":"application/octet-stream",
            "state":"uploaded","size":{size},"digest":{digest},"download_count":3,"created_at":"2026-01-01T00:00:00Z",
            "updated_at":"2026-01-01T00:00:00Z","browser_download_url":"https://github.com/acme/t/releases/download/1.1/{name}"}}"#
        )
    }

    fn release(tag: &str, prerelease: bool, assets: &[StdString], body: &str) -> StdString {
        format!(
            r#"{{"url":"https://api.github.com/repos/acme/t/releases/1","html_url":"https://github.com/acme/t/releases/tag/{tag}",
            "id":1,"author":{{"login":"dev","id":2,"site_admin":false}},"node_id":"RE_x","tag_name":"{tag}","target_commitish":"main",
            "name":"Release {tag}","draft":false,"immutable":false,"prerelease":{prerelease},"created_at":"2026-01-01T00:00:00Z",
            "published_at":"2026-01-01T00:00:00Z","assets":[{}],"tarball_url":"x","zipball_url":"y","body":"{body}",
            "reactions":{{"+1":3,"heart":1}}}}"#,
            assets.join(",")
        )
    }

    const DIGEST: &str =
        "\"sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"";

    fn parse_in_chunks(
        doc: &str,
        chunk: usize,
        prereleases: bool,
    ) -> Result<SelectedRelease, ReleaseError> {
        let mut p = ReleaseParser::new("fw.bin", prereleases);
        for piece in doc.as_bytes().chunks(chunk) {
            p.push(piece)?;
        }
        p.finish()
    }

    #[test]
    fn the_configured_asset_of_the_latest_release_is_selected() {
        let doc = release(
            "1.1",
            false,
            &[
                asset("other.bin", "5", "null"),
                asset("fw.bin", "123456", DIGEST),
            ],
            "notes",
        );
        let r = parse_in_chunks(&doc, 7, false).unwrap();
        assert_eq!(r.tag, "1.1");
        assert_eq!(r.version, Version::new(1, 1, None));
        assert_eq!(r.asset.size, 123456);
        assert_eq!(
            r.asset.download_url,
            "https://github.com/acme/t/releases/download/1.1/fw.bin"
        );
        assert_eq!(
            r.asset.api_url,
            "https://api.github.com/repos/acme/t/releases/assets/9"
        );
        assert_eq!(r.asset.sha256.unwrap()[..4], [0x00, 0x11, 0x22, 0x33]);
    }

    #[test]
    fn a_64_kib_release_with_a_long_body_parses_in_the_fixed_buffer() {
        let body = "Fixes \\\"everything\\\" \\u00e9\\n".repeat(64 * 1024 / 28);
        let doc = release("2.10", false, &[asset("fw.bin", "1048576", DIGEST)], &body);
        assert!(doc.len() >= 64 * 1024, "{}", doc.len());
        let r = parse_in_chunks(&doc, 1460, false).unwrap();
        assert_eq!(r.tag, "2.10");
        // 2 KiB URLs: the asset being read, the best release so far, the value buffer.
        assert!(
            core::mem::size_of::<ReleaseParser>() < 16 * 1024,
            "{}",
            core::mem::size_of::<ReleaseParser>()
        );
    }

    #[test]
    fn hostile_values_are_typed_errors() {
        let bad = |doc: StdString| parse_in_chunks(&doc, 64, false).unwrap_err();
        assert_eq!(
            bad(release(
                "1.1",
                false,
                &[asset("fw.bin", "99999999999", DIGEST)],
                ""
            )),
            ReleaseError::BadSize
        );
        assert_eq!(
            bad(release("1.1", false, &[asset("fw.bin", "-1", DIGEST)], "")),
            ReleaseError::BadSize
        );
        assert_eq!(
            bad(release(
                "1.1",
                false,
                &[asset("fw.bin", "\"12\"", DIGEST)],
                ""
            )),
            ReleaseError::WrongType("assets[].size")
        );
        assert_eq!(
            bad(release(
                "1.1",
                false,
                &[asset("fw.bin", "1", "\"md5:abc\"")],
                ""
            )),
            ReleaseError::BadDigest
        );
        assert_eq!(
            bad(release("1.1", false, &[asset("x.bin", "1", DIGEST)], "")),
            ReleaseError::AssetMissing {
                tag: "1.1".try_into().unwrap()
            }
        );
        assert!(matches!(
            bad(release("latest", false, &[], "")),
            ReleaseError::BadTag {
                error: VersionError::NotANumber,
                ..
            }
        ));
        let long = "9".repeat(5000);
        assert!(matches!(
            bad(release(&long, false, &[], "")),
            ReleaseError::BadTag {
                error: VersionError::TooLong,
                ..
            }
        ));
        assert_eq!(
            bad(r#"{"name":"x"}"#.into()),
            ReleaseError::Missing("tag_name")
        );
        assert_eq!(bad(r#""just a string""#.into()), ReleaseError::NotARelease);
        assert_eq!(
            bad(r#"{"tag_name": 11}"#.into()),
            ReleaseError::WrongType("tag_name")
        );
        assert!(matches!(
            bad(release("1.1", false, &[], "")[..100].into()),
            ReleaseError::Syntax(_)
        ));
        let long_url =
            asset("fw.bin", "1", DIGEST).replace("releases/download", &"a/".repeat(1100));
        assert_eq!(
            bad(release("1.1", false, &[long_url], "")),
            ReleaseError::TooLong("assets[].browser_download_url")
        );
    }

    #[test]
    fn a_malformed_sibling_asset_does_not_spoil_ours() {
        let doc = release(
            "1.1",
            false,
            &[
                asset("other.bin", "-5", "\"sha512:abc\""),
                asset("fw.bin", "10", DIGEST),
            ],
            "",
        );
        assert_eq!(parse_in_chunks(&doc, 64, false).unwrap().asset.size, 10);
    }

    #[test]
    fn a_prerelease_is_refused_unless_allowed() {
        let doc = release("1.2", true, &[asset("fw.bin", "10", DIGEST)], "");
        assert_eq!(
            parse_in_chunks(&doc, 50, false).unwrap_err(),
            ReleaseError::NotEligible
        );
        assert!(parse_in_chunks(&doc, 50, true).unwrap().prerelease);
    }

    #[test]
    fn from_a_list_the_highest_eligible_version_wins() {
        let list = format!(
            "[{},{},{},{}]",
            release("1.9", false, &[asset("fw.bin", "10", DIGEST)], ""),
            release("1.10", true, &[asset("fw.bin", "11", DIGEST)], ""),
            release("nightly", true, &[asset("fw.bin", "12", DIGEST)], ""),
            release("2.0", false, &[asset("other.bin", "13", DIGEST)], ""),
        );
        assert_eq!(parse_in_chunks(&list, 33, false).unwrap().tag, "1.9");
        assert_eq!(parse_in_chunks(&list, 33, true).unwrap().tag, "1.10");
        assert_eq!(
            parse_in_chunks("[]", 33, true).unwrap_err(),
            ReleaseError::NoEligibleRelease
        );
    }
}
