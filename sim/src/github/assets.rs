//! The asset host: the signed, short-lived URLs GitHub redirects downloads to, and their checks.
//!
//! GitHub answers `browser_download_url` (and the API asset URL asked with
//! `Accept: application/octet-stream`) with a 302 whose `Location` is a 0.6–1.2 KB signed URL
//! on a separate host. Two shapes are in the wild (see `fixtures/github/README.md` for where
//! they were taken from):
//!
//! ```text
//!  release-assets.githubusercontent.com (since mid-2025: an Azure Blob SAS plus a GitHub JWT)
//!    /github-production-release-asset/{repo_id}/{uuid}?sp=r&sv=2018-11-09&sr=b&spr=https
//!      &se={expiry}&rscd=attachment%3B+filename%3D{name}&rsct=application%2Foctet-stream
//!      &skoid={uuid}&sktid={uuid}&skt={key start}&ske={key expiry}&sks=b&skv=2018-11-09
//!      &sig={base64 HMAC}&jwt={header.payload.signature}
//!      &response-content-disposition=attachment%3B%20filename%3D{name}
//!      &response-content-type=application%2Foctet-stream
//!  objects.githubusercontent.com (before: S3 SigV4 query authentication)
//!    /github-production-release-asset-2e65be/{repo_id}/{uuid}?X-Amz-Algorithm=AWS4-HMAC-SHA256
//!      &X-Amz-Credential=releaseassetproduction%2F{yyyymmdd}%2Fus-east-1%2Fs3%2Faws4_request
//!      &X-Amz-Date={yyyymmddThhmmssZ}&X-Amz-Expires=300&X-Amz-Signature={hex HMAC}
//!      &X-Amz-SignedHeaders=host&actor_id=0&key_id=0&repo_id={repo_id}
//!      &response-content-disposition=attachment%3B%20filename%3D{name}
//!      &response-content-type=application%2Foctet-stream
//! ```
//!
//! The mock builds both shapes on its own asset route and checks what the real hosts check:
//! an HMAC-SHA256 over the path and every signed parameter (a client that truncates or
//! re-encodes the URL fails it), and the expiry by the mock's clock (the simulator's virtual
//! time). Failures answer like the real backends: Azure's `AuthenticationFailed` XML or S3's
//! `SignatureDoesNotMatch` / `AccessDenied` XML, both 403.

use sha2::{Digest, Sha256};

use super::releases::{civil_from_days, days_from_civil};

/// Which asset host shape the mock redirects downloads to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AssetUrl {
    /// `release-assets.githubusercontent.com`: Azure SAS parameters plus a JWT (~1 KB). GitHub's
    /// current shape, the default.
    #[default]
    ReleaseAssets,
    /// `objects.githubusercontent.com`: S3 SigV4 query parameters (~0.7 KB). GitHub's shape
    /// until 2025.
    Objects,
}

impl std::str::FromStr for AssetUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "release-assets" => Ok(AssetUrl::ReleaseAssets),
            "objects" => Ok(AssetUrl::Objects),
            other => Err(format!(
                "unknown asset URL shape `{other}` (release-assets or objects)"
            )),
        }
    }
}

impl AssetUrl {
    /// First path segment of the asset route of this shape.
    pub fn prefix(self) -> &'static str {
        match self {
            AssetUrl::ReleaseAssets => PREFIX_RELEASE_ASSETS,
            AssetUrl::Objects => PREFIX_OBJECTS,
        }
    }
}

/// Path prefix of the newer asset URLs.
pub(crate) const PREFIX_RELEASE_ASSETS: &str = "/github-production-release-asset";
/// Path prefix of the older asset URLs (the S3 bucket's name).
pub(crate) const PREFIX_OBJECTS: &str = "/github-production-release-asset-2e65be";

/// The mock's signing key: both the SAS signature and the JWT are HMACs under it.
const SIGNING_KEY: &[u8] = b"esp-ota mock GitHub asset signing key";
/// Azure SAS validity of a redirect (GitHub's `se` is about an hour after issue).
const SAS_VALID_S: u64 = 3600;
/// JWT validity (GitHub's `exp - nbf` is 300 s) and S3's `X-Amz-Expires`.
const SHORT_VALID_S: u64 = 300;
/// The Azure tenant and key object ids GitHub's SAS URLs carry (opaque to clients).
const SKOID: &str = "96c2d410-5711-43a1-aedd-ab1947aa7ab0";
const SKTID: &str = "398a6654-997b-47e9-b12b-9515b896b4de";

/// What identifies one asset on the asset host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AssetRef<'a> {
    pub owner: &'a str,
    pub repo: &'a str,
    pub asset_id: u64,
    pub name: &'a str,
}

/// GitHub's numeric repository id for `owner/repo`: stable, nine digits like real ones.
pub(crate) fn repo_id(owner: &str, repo: &str) -> u64 {
    let h = Sha256::digest(format!("{owner}/{repo}").as_bytes());
    100_000_000 + u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]) % 900_000_000
}

/// The storage object's UUID for an asset id (a version-4-looking UUID, stable per asset).
pub(crate) fn object_uuid(asset_id: u64) -> String {
    let h = hex::encode(Sha256::digest(format!("asset:{asset_id}").as_bytes()));
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The signed URL (path and query, no scheme or host) of `asset`, issued at `now`.
pub(crate) fn signed_path(shape: AssetUrl, asset: &AssetRef<'_>, now: u64) -> String {
    let path = format!(
        "{}/{}/{}",
        shape.prefix(),
        repo_id(asset.owner, asset.repo),
        object_uuid(asset.asset_id)
    );
    let name = form_encode(asset.name);
    let disposition = format!(
        "response-content-disposition=attachment%3B%20filename%3D{name}\
         &response-content-type=application%2Foctet-stream"
    );
    match shape {
        AssetUrl::ReleaseAssets => {
            let se = iso_encoded(now + SAS_VALID_S);
            let signed = format!(
                "sp=r&sv=2018-11-09&sr=b&spr=https&se={se}\
                 &rscd=attachment%3B+filename%3D{name}&rsct=application%2Foctet-stream\
                 &skoid={SKOID}&sktid={SKTID}&skt={}&ske={se}&sks=b&skv=2018-11-09",
                iso_encoded(now.saturating_sub(60)),
            );
            let sig = sas_signature(&path, &signed);
            let jwt = jwt(now, now + SHORT_VALID_S);
            format!("{path}?{signed}&sig={sig}&jwt={jwt}&{disposition}")
        }
        AssetUrl::Objects => {
            let date = amz_date(now);
            let signed_head = format!(
                "X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential=releaseassetproduction%2F{}%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date={date}&X-Amz-Expires={SHORT_VALID_S}",
                &date[..8],
            );
            let signed_tail = format!(
                "X-Amz-SignedHeaders=host&actor_id=0&key_id=0&repo_id={}&{disposition}",
                repo_id(asset.owner, asset.repo)
            );
            let sig = hex::encode(hmac(
                SIGNING_KEY,
                format!("{path}\n{signed_head}&{signed_tail}").as_bytes(),
            ));
            format!("{path}?{signed_head}&X-Amz-Signature={sig}&{signed_tail}")
        }
    }
}

/// Why the asset host refuses a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A parameter is missing, malformed or does not match its signature.
    BadSignature(String),
    /// The URL was valid once; its time is up.
    Expired {
        /// When it expired (Unix seconds).
        expiry: u64,
        /// The host's clock.
        now: u64,
    },
}

/// Checks a signed URL as the real host would: signature over path and parameters, then time.
pub(crate) fn verify(shape: AssetUrl, path: &str, query: &str, now: u64) -> Result<(), Refusal> {
    let params: Vec<(&str, &str)> = query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let bad = |what: &str| Refusal::BadSignature(what.to_owned());
    match shape {
        AssetUrl::ReleaseAssets => {
            // The SAS signature covers every parameter before `sig`, exactly as sent.
            let (signed, rest) = query
                .split_once("&sig=")
                .ok_or_else(|| bad("no sig parameter"))?;
            let sig = rest.split('&').next().unwrap_or("");
            if sig != sas_signature(path, signed) {
                return Err(bad("sig does not match the path and parameters"));
            }
            let token = get("jwt").ok_or_else(|| bad("no jwt parameter"))?;
            let exp = verify_jwt(token).ok_or_else(|| bad("jwt signature or payload invalid"))?;
            let se = get("se")
                .and_then(parse_iso_encoded)
                .ok_or_else(|| bad("se is not a time"))?;
            for expiry in [se, exp] {
                if now > expiry {
                    return Err(Refusal::Expired { expiry, now });
                }
            }
            Ok(())
        }
        AssetUrl::Objects => {
            let sig = get("X-Amz-Signature").ok_or_else(|| bad("no X-Amz-Signature"))?;
            let signed: Vec<&str> = query
                .split('&')
                .filter(|p| !p.starts_with("X-Amz-Signature="))
                .collect();
            let expected = hex::encode(hmac(
                SIGNING_KEY,
                format!("{path}\n{}", signed.join("&")).as_bytes(),
            ));
            if sig != expected {
                return Err(bad("X-Amz-Signature does not match"));
            }
            let date = get("X-Amz-Date")
                .and_then(parse_amz_date)
                .ok_or_else(|| bad("X-Amz-Date is not a time"))?;
            let expires: u64 = get("X-Amz-Expires")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("X-Amz-Expires is not a number"))?;
            if now > date + expires {
                return Err(Refusal::Expired {
                    expiry: date + expires,
                    now,
                });
            }
            Ok(())
        }
    }
}

/// The XML body the real backend answers a refused URL with (403).
pub(crate) fn refusal_body(shape: AssetUrl, refusal: &Refusal) -> String {
    match (shape, refusal) {
        (AssetUrl::ReleaseAssets, Refusal::BadSignature(why)) => format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code>\
             <Message>Server failed to authenticate the request. Make sure the value of Authorization \
             header is formed correctly including the signature.</Message>\
             <AuthenticationErrorDetail>{why}</AuthenticationErrorDetail></Error>"
        ),
        (AssetUrl::ReleaseAssets, Refusal::Expired { expiry, now }) => format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code>\
             <Message>Server failed to authenticate the request. Make sure the value of Authorization \
             header is formed correctly including the signature.</Message>\
             <AuthenticationErrorDetail>Signature not valid in the specified time frame: Expiry [{}] - \
             Current [{}]</AuthenticationErrorDetail></Error>",
            super::releases::http_date(*expiry),
            super::releases::http_date(*now)
        ),
        (AssetUrl::Objects, Refusal::BadSignature(_)) => {
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code>\
             <Message>The request signature we calculated does not match the signature you provided. \
             Check your key and signing method.</Message></Error>"
                .to_owned()
        }
        (AssetUrl::Objects, Refusal::Expired { expiry, now }) => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>\
             <Message>Request has expired</Message><X-Amz-Expires>{SHORT_VALID_S}</X-Amz-Expires>\
             <Expires>{}</Expires><ServerTime>{}</ServerTime></Error>",
            super::releases::iso8601(*expiry),
            super::releases::iso8601(*now)
        ),
    }
}

/// The asset's `ETag` as Azure Blob storage writes it (`"0x8D…"`, 15 hex digits).
pub(crate) fn etag(bytes: &bytes::Bytes) -> String {
    let h = hex::encode_upper(super::releases::sha256_of(bytes));
    format!("\"0x8DD{}\"", &h[..12])
}

/// Whether an `If-Range` precondition lets a `Range` apply (RFC 9110 §13.1.5): an entity tag
/// must match the current one by strong comparison (a weak tag never does); a date must equal
/// `Last-Modified` exactly. Anything else means "the representation changed: send all of it".
pub(crate) fn if_range_holds(if_range: Option<&str>, etag: &str, last_modified: &str) -> bool {
    let Some(value) = if_range.map(str::trim) else {
        return true;
    };
    if value.starts_with("W/") {
        return false;
    }
    if value.starts_with('"') {
        return value == etag;
    }
    value == last_modified
}

// ---------------------------------------------------------------------------------------------
// Signatures

/// HMAC-SHA256 (RFC 2104), written out: one primitive the mock needs, not worth a dependency.
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Azure's `sig`: base64 of the HMAC, percent-encoded as it appears in the query.
fn sas_signature(path: &str, signed: &str) -> String {
    use base64::Engine as _;
    let raw = hmac(SIGNING_KEY, format!("{path}\n{signed}").as_bytes());
    form_encode(&base64::engine::general_purpose::STANDARD.encode(raw))
}

/// GitHub's JWT: HS256 over `{"iss","aud","key","exp","nbf","path"}`, base64url without padding.
fn jwt(nbf: u64, exp: u64) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"typ":"JWT","alg":"HS256"}"#);
    let payload = b64.encode(format!(
        r#"{{"iss":"github.com","aud":"release-assets.githubusercontent.com","key":"key1","exp":{exp},"nbf":{nbf},"path":"releaseassetproduction.blob.core.windows.net"}}"#
    ));
    let signature = b64.encode(hmac(SIGNING_KEY, format!("{header}.{payload}").as_bytes()));
    format!("{header}.{payload}.{signature}")
}

/// The JWT's `exp` when its signature holds.
fn verify_jwt(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    let expected = b64.encode(hmac(SIGNING_KEY, format!("{header}.{payload}").as_bytes()));
    if signature != expected || parts.next().is_some() {
        return None;
    }
    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(payload).ok()?).ok()?;
    claims["exp"].as_u64()
}

// ---------------------------------------------------------------------------------------------
// Encodings

/// Percent-encodes what is not unreserved (RFC 3986), as GitHub's URLs do in parameter values.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `2025-12-18T11%3A40%3A34Z`: ISO 8601 with the colons percent-encoded, as in `se`/`skt`.
fn iso_encoded(secs: u64) -> String {
    super::releases::iso8601(secs).replace(':', "%3A")
}

fn parse_iso_encoded(v: &str) -> Option<u64> {
    // YYYY-MM-DDTHH%3AMM%3ASSZ
    let v = v.replace("%3A", ":");
    let (date, time) = v.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<u64>().ok());
    let mut t = time.split(':').map(|p| p.parse::<u64>().ok());
    civil_to_unix(
        d.next()??,
        d.next()??,
        d.next()??,
        t.next()??,
        t.next()??,
        t.next()??,
    )
}

/// `20251218T114034Z`, S3's `X-Amz-Date`.
fn amz_date(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn parse_amz_date(v: &str) -> Option<u64> {
    if v.len() != 16 || !v.is_ascii() {
        return None;
    }
    let n = |r: std::ops::Range<usize>| v[r].parse::<u64>().ok();
    civil_to_unix(
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(9..11)?,
        n(11..13)?,
        n(13..15)?,
    )
}

fn civil_to_unix(y: u64, m: u64, d: u64, h: u64, mi: u64, s: u64) -> Option<u64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(y as i64, m as u32, d as u32)).ok()?;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASSET: AssetRef<'static> = AssetRef {
        owner: "acme",
        repo: "thermostat",
        asset_id: 200_101,
        name: "firmware.bin",
    };
    const NOW: u64 = 1_766_054_858; // 2025-12-18T10:47:38Z

    fn split(url: &str) -> (&str, &str) {
        url.split_once('?').expect("a query")
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn both_shapes_are_as_long_as_githubs_and_verify() {
        for (shape, min) in [(AssetUrl::ReleaseAssets, 800), (AssetUrl::Objects, 500)] {
            let url = signed_path(shape, &ASSET, NOW);
            // Plus `https://release-assets.githubusercontent.com` (44) this is GitHub's length.
            assert!(url.len() > min, "{shape:?}: {} bytes: {url}", url.len());
            assert!(url.starts_with(shape.prefix()));
            let (path, query) = split(&url);
            assert_eq!(verify(shape, path, query, NOW), Ok(()), "{url}");
            assert_eq!(verify(shape, path, query, NOW + 299), Ok(()));
        }
    }

    #[test]
    fn a_changed_byte_or_a_late_client_is_refused() {
        for shape in [AssetUrl::ReleaseAssets, AssetUrl::Objects] {
            let url = signed_path(shape, &ASSET, NOW);
            let (path, query) = split(&url);
            let other_path = path.replace(&object_uuid(ASSET.asset_id), &object_uuid(7));
            assert!(matches!(
                verify(shape, &other_path, query, NOW),
                Err(Refusal::BadSignature(_))
            ));
            let renamed = query.replace("firmware.bin", "firmware.elf");
            assert!(matches!(
                verify(shape, path, &renamed, NOW),
                Err(Refusal::BadSignature(_))
            ));
            // What a client with a short URL buffer would send.
            let cut = &query[..query.len() / 2];
            assert!(verify(shape, path, cut, NOW).is_err(), "{shape:?}");
            assert!(matches!(
                verify(shape, path, query, NOW + 301),
                Err(Refusal::Expired { .. })
            ));
        }
    }

    #[test]
    fn times_round_trip_through_their_url_spellings() {
        assert_eq!(iso_encoded(NOW), "2025-12-18T10%3A47%3A38Z");
        assert_eq!(parse_iso_encoded(&iso_encoded(NOW)), Some(NOW));
        assert_eq!(amz_date(NOW), "20251218T104738Z");
        assert_eq!(parse_amz_date(&amz_date(NOW)), Some(NOW));
    }

    #[test]
    fn if_range_follows_rfc_9110() {
        let (tag, date) = ("\"0x8DD0123456789AB\"", "Thu, 18 Dec 2025 10:47:38 GMT");
        assert!(if_range_holds(None, tag, date));
        assert!(if_range_holds(Some(tag), tag, date));
        assert!(if_range_holds(Some(date), tag, date));
        assert!(!if_range_holds(Some("\"0x8DDother\""), tag, date));
        assert!(!if_range_holds(Some("W/\"0x8DD0123456789AB\""), tag, date));
        assert!(!if_range_holds(
            Some("Fri, 19 Dec 2025 10:47:38 GMT"),
            tag,
            date
        ));
    }
}
