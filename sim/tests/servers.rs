//! The simulator's servers, driven by the clients the virtual board uses (reqwest, rumqttc v5).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, LOCATION, RANGE,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sim::broker::{Broker, BrokerAddr, Collector};
use sim::github::{
    Asset, AssetUrl, Exhausted, Fault, FaultKind, GithubConfig, GithubHandle, MockGithub,
    RateLimit, Release, Route,
};
use sim::proxy::{Proxy, ProxyMode};

/// `Response::json` without reqwest's `json` feature (the board parses with its own parser).
trait JsonBody {
    async fn json_value(self) -> Result<Value, String>;
}

impl JsonBody for reqwest::Response {
    async fn json_value(self) -> Result<Value, String> {
        let body = self.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}

const OWNER: &str = "acme";
const REPO: &str = "blinky";

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A mock with releases 1.0 and 1.1 (the latest), a 1.2 prerelease and a 1.3 draft.
async fn github() -> GithubHandle {
    let gh = MockGithub::start(GithubConfig::default())
        .await
        .expect("mock GitHub starts");
    gh.set_releases(
        OWNER,
        REPO,
        vec![
            Release::new("1.0", 1_700_000_000).with_asset(Asset::new("firmware.bin", image(1000))),
            Release::new("1.1", 1_700_100_000)
                .with_asset(Asset::new("firmware.bin", image(100_000))),
            Release {
                prerelease: true,
                ..Release::new("1.2", 1_700_200_000)
            },
            Release {
                draft: true,
                ..Release::new("1.3", 1_700_300_000)
            },
        ],
    );
    gh
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client builds")
}

/// GETs `url` asking for `range`, with `If-Range: validator` when one is given.
async fn get_range(
    client: &reqwest::Client,
    url: &str,
    range: &str,
    if_range: Option<&str>,
) -> reqwest::Response {
    let mut request = client.get(url).header(RANGE, range);
    if let Some(validator) = if_range {
        request = request.header(IF_RANGE, validator);
    }
    request.send().await.expect("get")
}

/// GETs `url` with `Accept: accept` (the asset API answers with the JSON or the bytes by it).
async fn get_accepting(client: &reqwest::Client, url: &str, accept: &str) -> reqwest::Response {
    client
        .get(url)
        .header("accept", accept)
        .send()
        .await
        .expect("get")
}

/// Gives the mock a clock that stands at `start` until the test moves it: the returned
/// seconds since the epoch.
fn virtual_clock(gh: &GithubHandle, start: u64) -> Arc<AtomicU64> {
    let now = Arc::new(AtomicU64::new(start));
    let clock = now.clone();
    gh.set_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
    now
}

/// GETs `url` (following redirects) and reads the whole body.
async fn get_body(url: &str) -> bytes::Bytes {
    reqwest::get(url)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body")
}

/// The mock's `releases/latest` API URL.
fn latest_url(gh: &GithubHandle) -> String {
    format!("{}/repos/{OWNER}/{REPO}/releases/latest", gh.base_url())
}

/// The mock's download URL of release 1.1's `firmware.bin` (a redirect to the asset host).
fn download_url(gh: &GithubHandle) -> String {
    format!(
        "{}/{OWNER}/{REPO}/releases/download/1.1/firmware.bin",
        gh.base_url()
    )
}

async fn latest(gh: &GithubHandle) -> Value {
    reqwest::get(latest_url(gh))
        .await
        .expect("request succeeds")
        .json_value()
        .await
        .expect("JSON body")
}

#[tokio::test]
async fn latest_release_has_githubs_shape_and_the_assets_digest() {
    let gh = github().await;
    let base = gh.base_url();
    let rel = latest(&gh).await;

    assert_eq!(rel["tag_name"], "1.1", "newest published non-prerelease");
    for field in [
        "url",
        "html_url",
        "assets_url",
        "upload_url",
        "tarball_url",
        "zipball_url",
        "id",
        "node_id",
        "author",
        "target_commitish",
        "name",
        "draft",
        "prerelease",
        "immutable",
        "created_at",
        "published_at",
        "body",
    ] {
        assert!(rel.get(field).is_some(), "release field {field} missing");
    }
    assert_eq!(rel["author"]["type"], "Bot");
    assert_eq!(rel["published_at"], "2023-11-16T02:00:00Z");

    let asset = &rel["assets"][0];
    let id = asset["id"].as_u64().expect("numeric asset id");
    assert_eq!(
        asset["url"],
        format!("{base}/repos/{OWNER}/{REPO}/releases/assets/{id}")
    );
    assert_eq!(
        asset["browser_download_url"],
        format!("{base}/{OWNER}/{REPO}/releases/download/1.1/firmware.bin")
    );
    assert_eq!(asset["state"], "uploaded");
    assert_eq!(asset["size"], 100_000);
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(image(100_000))));
    assert_eq!(asset["digest"], digest.as_str());
    for field in [
        "node_id",
        "label",
        "uploader",
        "content_type",
        "download_count",
        "created_at",
        "updated_at",
    ] {
        assert!(asset.get(field).is_some(), "asset field {field} missing");
    }
}

#[tokio::test]
async fn drafts_are_listed_only_for_a_client_with_a_token() {
    let gh = github().await;
    let url = format!("{}/repos/{OWNER}/{REPO}/releases", gh.base_url());
    let tags = |v: Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|r| r["tag_name"].as_str().expect("tag").to_owned())
            .collect()
    };
    let anon: Value = reqwest::get(&url)
        .await
        .expect("get")
        .json_value()
        .await
        .expect("json");
    assert_eq!(tags(anon), ["1.2", "1.1", "1.0"]);
    let authed: Value = reqwest::Client::new()
        .get(&url)
        .bearer_auth("ghp_sim")
        .send()
        .await
        .expect("get")
        .json_value()
        .await
        .expect("json");
    assert_eq!(tags(authed), ["1.3", "1.2", "1.1", "1.0"]);
}

#[tokio::test]
async fn no_release_is_githubs_404() {
    let gh = github().await;
    gh.arm(Fault::NoRelease.times(1));
    let r = reqwest::get(latest_url(&gh))
        .await
        .expect("request succeeds");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json_value().await.expect("JSON error body");
    assert_eq!(body["message"], "Not Found");
    assert_eq!(gh.fired(FaultKind::NoRelease), 1);
    assert_eq!(
        latest(&gh).await["tag_name"],
        "1.1",
        "recovers after one firing"
    );
}

#[tokio::test]
async fn browser_download_url_redirects_to_the_asset_host() {
    let gh = github().await;
    let rel = latest(&gh).await;
    let url = rel["assets"][0]["browser_download_url"]
        .as_str()
        .expect("url")
        .to_owned();

    let r = no_redirects().get(&url).send().await.expect("request");
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = r.headers()[LOCATION].to_str().expect("ascii").to_owned();
    // github.com's page headers (a 3.4 KB Content-Security-Policy) come along: the head is
    // larger than a 4 KiB header buffer, as on the real site.
    let head: usize = r
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    assert!(head > 4096, "response head {head} bytes");
    assert!(
        // GitHub's host name is 15 bytes longer than `http://127.0.0.1:PORT`.
        location.contains("/github-production-release-asset/") && location.len() > 850,
        "a ~1 KB signed URL like GitHub's: {location}"
    );

    let r = reqwest::get(&url).await.expect("followed");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_LENGTH], "100000");
    assert_eq!(r.bytes().await.expect("body").as_ref(), image(100_000));

    // The API asset URL with Accept: octet-stream goes to the same host.
    let api = rel["assets"][0]["url"].as_str().expect("url");
    let r = get_accepting(&no_redirects(), api, "application/octet-stream").await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(
        r.headers()[LOCATION]
            .to_str()
            .expect("ascii")
            .contains("/github-production-release-asset/")
    );
    let json: Value = get_accepting(&reqwest::Client::new(), api, "application/json")
        .await
        .json_value()
        .await
        .expect("asset JSON");
    assert_eq!(json["name"], "firmware.bin");

    let log = gh.requests();
    let cdn = log
        .iter()
        .find(|r| r.path.starts_with("/github-production-release-asset/"))
        .expect("CDN request logged");
    assert_eq!(
        (cdn.status, cdn.bytes_sent, cdn.aborted),
        (200, 100_000, false)
    );
}

#[tokio::test]
async fn ranges_resume_and_out_of_range_is_416() {
    let gh = github().await;
    let url = download_url(&gh);
    let all = image(100_000);
    let client = reqwest::Client::new();

    let r = get_range(&client, &url, "bytes=40000-", None).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes 40000-99999/100000");
    assert_eq!(r.headers()[CONTENT_LENGTH], "60000");
    assert_eq!(r.bytes().await.expect("body").as_ref(), &all[40_000..]);

    let r = get_range(&client, &url, "bytes=10-19", None).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &all[10..20]);

    let r = get_range(&client, &url, "bytes=100000-", None).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes */100000");

    // reqwest forwards Range across the redirect, so the CDN requests carry it.
    let ranges: Vec<_> = gh
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/github-production-release-asset/"))
        .filter_map(|r| r.range)
        .collect();
    assert_eq!(ranges, ["bytes=40000-", "bytes=10-19", "bytes=100000-"]);
}

/// Follows one redirect by hand and returns the signed asset URL.
async fn signed_url(gh: &GithubHandle) -> String {
    let url = download_url(gh);
    let r = no_redirects().get(&url).send().await.expect("request");
    assert_eq!(r.status(), StatusCode::FOUND);
    r.headers()[LOCATION].to_str().expect("ascii").to_owned()
}

#[tokio::test]
async fn the_asset_host_checks_signature_and_expiry_in_both_shapes() {
    let gh = github().await;
    let now = virtual_clock(&gh, 1_766_054_858);
    for (shape, prefix, refusal) in [
        (
            AssetUrl::ReleaseAssets,
            "/github-production-release-asset/",
            "AuthenticationFailed",
        ),
        (
            AssetUrl::Objects,
            "/github-production-release-asset-2e65be/",
            "SignatureDoesNotMatch",
        ),
    ] {
        gh.set_asset_url(shape);
        let url = signed_url(&gh).await;
        assert!(url.contains(prefix), "{shape:?}: {url}");
        let r = reqwest::get(&url).await.expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{shape:?}");
        assert_eq!(r.bytes().await.expect("body").as_ref(), image(100_000));

        // One byte of the signed part changed: the storage backend refuses it.
        let tampered = url.replace("filename%3Dfirmware.bin", "filename%3Dfirmware.elf");
        let r = reqwest::get(&tampered).await.expect("get");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{shape:?}");
        assert_eq!(r.headers()["x-ms-error-code"], refusal);
        // A URL cut short (a client with a 256-byte URL buffer) is refused too.
        let r = reqwest::get(&url[..256]).await.expect("get");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{shape:?}");

        // Five minutes later the URL has expired; a fresh redirect works again.
        now.fetch_add(301, Ordering::SeqCst);
        let r = reqwest::get(&url).await.expect("get");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{shape:?}");
        let body = r.text().await.expect("xml");
        assert!(
            body.contains("Request has expired") || body.contains("time frame"),
            "{body}"
        );
        let r = reqwest::get(signed_url(&gh).await).await.expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{shape:?}");
    }
}

#[tokio::test]
async fn assets_carry_validators_and_honour_if_range() {
    let gh = github().await;
    let url = signed_url(&gh).await;
    let client = reqwest::Client::new();
    let full = client.get(&url).send().await.expect("get");
    let etag = full.headers()[ETAG].to_str().expect("ascii").to_owned();
    let modified = full.headers()[LAST_MODIFIED]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(etag.starts_with("\"0x8D"), "Azure-style ETag: {etag}");
    assert!(modified.ends_with(" GMT"), "{modified}");

    // The validator matches: the range applies.
    for validator in [etag.as_str(), modified.as_str()] {
        let r = get_range(&client, &url, "bytes=40000-", Some(validator)).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{validator}");
        assert_eq!(r.headers()[CONTENT_RANGE], "bytes 40000-99999/100000");
    }
    // It does not (another ETag, a weak one, another date): the whole asset, 200 (RFC 9110).
    for validator in [
        "\"0x8DD000000000000\"".to_owned(),
        format!("W/{etag}"),
        "Thu, 01 Jan 2015 00:00:00 GMT".to_owned(),
    ] {
        let r = get_range(&client, &url, "bytes=40000-", Some(&validator)).await;
        assert_eq!(r.status(), StatusCode::OK, "{validator}");
        assert!(r.headers().get(CONTENT_RANGE).is_none());
        assert_eq!(r.bytes().await.expect("body").len(), 100_000);
    }
    // Out of range: 416 with the size, even with a matching validator.
    let r = get_range(&client, &url, "bytes=100000-", Some(&etag)).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes */100000");
}

#[tokio::test]
async fn an_asset_replaced_in_storage_keeps_its_ids_and_changes_only_its_etag() {
    let gh = github().await;
    let before = latest(&gh).await;
    let url = signed_url(&gh).await;
    let client = reqwest::Client::new();
    let old = client.get(&url).send().await.expect("get");
    let (old_etag, old_modified) = (
        old.headers()[ETAG].clone(),
        old.headers()[LAST_MODIFIED].clone(),
    );

    let rebuilt: Vec<u8> = image(100_000).iter().map(|b| b ^ 0x5A).collect();
    assert!(gh.replace_asset_bytes(OWNER, REPO, "1.1", "firmware.bin", rebuilt.clone()));
    assert!(!gh.replace_asset_bytes(OWNER, REPO, "1.1", "firmware.elf", rebuilt.clone()));
    let after = latest(&gh).await;
    for field in ["id", "updated_at", "size", "url"] {
        assert_eq!(
            before["assets"][0][field], after["assets"][0][field],
            "{field}"
        );
    }
    assert_eq!(before["id"], after["id"]);

    // The URL issued before the replacement serves the new bytes, under a new ETag only.
    let r = get_range(
        &client,
        &url,
        "bytes=40000-",
        Some(old_etag.to_str().expect("ascii")),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "If-Range with the old ETag: the whole new file"
    );
    assert_ne!(r.headers()[ETAG], old_etag);
    assert_eq!(r.headers()[LAST_MODIFIED], old_modified);
    assert_eq!(r.bytes().await.expect("body").as_ref(), rebuilt.as_slice());
}

#[tokio::test]
async fn an_asset_without_digest_shows_null_as_github_does_for_old_uploads() {
    let gh = github().await;
    gh.set_releases(
        OWNER,
        REPO,
        vec![
            Release::new("1.1", 1_700_100_000)
                .with_asset(Asset::new("firmware.bin", image(1000)).without_digest()),
        ],
    );
    let asset = &latest(&gh).await["assets"][0];
    assert!(asset.get("digest").is_some_and(Value::is_null), "{asset}");
    assert_eq!(asset["size"], 1000);
}

#[tokio::test]
async fn etag_gives_304_which_costs_no_rate_limit_only_with_a_token() {
    let gh = github().await;
    let url = latest_url(&gh);
    let client = reqwest::Client::new();
    // GitHub: a 304 to an authorized request does not count against the primary limit.
    let first = client
        .get(&url)
        .bearer_auth("ghp_sim")
        .send()
        .await
        .expect("get");
    let etag = first.headers()[ETAG].clone();
    assert!(etag.to_str().expect("ascii").starts_with("W/\""));
    assert_eq!(first.headers()["x-ratelimit-remaining"], "4999");
    let again = client
        .get(&url)
        .bearer_auth("ghp_sim")
        .header(IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .expect("get");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["x-ratelimit-remaining"], "4999");
    assert!(again.bytes().await.expect("body").is_empty());

    // An unauthenticated 304 counts like any other answer.
    let first = client.get(&url).send().await.expect("get");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "59");
    let again = client
        .get(&url)
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .expect("get");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["x-ratelimit-remaining"], "58");
}

#[tokio::test]
async fn rate_limit_counts_down_then_403_until_the_window_resets() {
    let gh = github().await;
    let now = virtual_clock(&gh, 1_700_000_000);
    gh.set_rate_limit(RateLimit {
        anonymous: 3,
        ..RateLimit::default()
    });
    let url = latest_url(&gh);
    for left in ["2", "1", "0"] {
        let r = reqwest::get(&url).await.expect("get");
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(h["x-ratelimit-remaining"], left);
        assert_eq!(h["x-ratelimit-reset"], "1700003600");
        assert_eq!(h["x-ratelimit-resource"], "core");
    }
    // Downloads are not API calls: they still work.
    let dl = download_url(&gh);
    assert_eq!(
        reqwest::get(&dl).await.expect("get").status(),
        StatusCode::OK
    );

    let r = reqwest::get(&url).await.expect("get");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(r.headers()["x-ratelimit-used"], "3");
    let body: Value = r.json_value().await.expect("json");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .starts_with("API rate limit exceeded")
    );
    assert_eq!(gh.fired(FaultKind::RateLimited), 1);

    gh.set_rate_limit(RateLimit {
        anonymous: 3,
        exhausted: Exhausted::TooManyRequests { retry_after: 42 },
        ..RateLimit::default()
    });
    let r = reqwest::get(&url).await.expect("get");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "42");

    // The virtual clock passes the reset time: a fresh window.
    now.store(1_700_003_600, Ordering::SeqCst);
    let r = reqwest::get(&url).await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "2");
}

#[tokio::test]
async fn server_error_fires_n_times_then_recovers() {
    let gh = github().await;
    gh.arm(
        Fault::ServerError {
            status: 503,
            on: Route::Api,
        }
        .times(2),
    );
    let url = latest_url(&gh);
    let statuses: Vec<u16> = futures_util::future::join_all(
        (0..3).map(|_| async { reqwest::get(&url).await.expect("get").status().as_u16() }),
    )
    .await;
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 503, 503]);
    assert_eq!(gh.fired(FaultKind::ServerError), 2);
}

#[tokio::test]
async fn truncated_json_is_valid_http_with_invalid_json() {
    let gh = github().await;
    gh.arm(Fault::TruncatedJson.times(1));
    let r = reqwest::get(latest_url(&gh)).await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.bytes().await.expect("whole body arrives");
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    assert_eq!(gh.fired(FaultKind::TruncatedJson), 1);
}

#[tokio::test]
async fn wrong_size_and_wrong_hash_lie_in_the_json_only() {
    let gh = github().await;
    gh.set_faults([Fault::WrongSize { delta: 1 }, Fault::WrongHash]);
    let asset = latest(&gh).await["assets"][0].clone();
    assert_eq!(asset["size"], 100_001);
    let good = format!("sha256:{}", hex::encode(Sha256::digest(image(100_000))));
    assert_ne!(asset["digest"], good.as_str());
    assert_eq!(asset["digest"].as_str().expect("digest").len(), good.len());
}

#[tokio::test]
async fn cut_body_after_makes_the_body_stream_fail() {
    let gh = github().await;
    gh.arm(Fault::CutBodyAfter { bytes: 30_000 }.times(1));
    let url = download_url(&gh);
    let r = reqwest::get(&url).await.expect("headers arrive");
    assert_eq!(
        r.headers()[CONTENT_LENGTH],
        "100000",
        "the full length is announced"
    );
    let mut stream = r.bytes_stream();
    let mut got = 0usize;
    let mut error = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got += c.len(),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let error = error.expect("the body stream reports the truncation");
    assert!(error.is_body() || error.is_decode(), "{error:?}");
    assert_eq!(got, 30_000);
    assert_eq!(gh.fired(FaultKind::CutBodyAfter), 1);
    let rec = gh
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/github-production-release-asset/"))
        .expect("logged");
    assert_eq!((rec.bytes_sent, rec.aborted), (30_000, true));

    // Disarmed after one firing: a resume fetches the rest.
    let rest = get_range(&reqwest::Client::new(), &url, "bytes=30000-", None)
        .await
        .bytes()
        .await
        .expect("body");
    assert_eq!(rest.as_ref(), &image(100_000)[30_000..]);
}

#[tokio::test]
async fn stall_and_trickle_slow_the_body_but_deliver_it() {
    let gh = github().await;
    gh.set_faults([
        Fault::Stall {
            after: 50_000,
            pause: Duration::from_millis(300),
        }
        .times(1),
        Fault::Trickle {
            chunk: 25_000,
            delay: Duration::from_millis(10),
        }
        .times(1),
    ]);
    let url = download_url(&gh);
    let start = std::time::Instant::now();
    let body = get_body(&url).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(body.as_ref(), image(100_000));
    assert_eq!(gh.fired(FaultKind::Stall), 1);
    assert_eq!(gh.fired(FaultKind::Trickle), 1);
}

#[tokio::test]
async fn redirect_loop_never_reaches_the_bytes() {
    let gh = github().await;
    gh.arm(Fault::RedirectLoop);
    let url = download_url(&gh);
    let r = no_redirects().get(&url).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[LOCATION], url.as_str(), "redirects to itself");
    let err = reqwest::get(&url).await.expect_err("reqwest gives up");
    assert!(err.is_redirect(), "{err:?}");
    assert!(gh.fired(FaultKind::RedirectLoop) > 10);
}

#[tokio::test]
async fn broker_delivers_a_qos1_publish_from_an_mqtt5_client() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let broker = Broker::start_embedded().expect("broker starts");
    let addr = BrokerAddr::parse(&broker.url()).expect("own URL parses");
    let collector = Collector::connect(&addr, "ota/board-1")
        .await
        .expect("subscribed");

    let mut opts = MqttOptions::new("board-1", "127.0.0.1", broker.addr.port());
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .publish(
            "ota/board-1/log",
            QoS::AtLeastOnce,
            false,
            "{\"outcome\":\"updated\"}",
        )
        .await
        .expect("queued");
    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await.expect("connection stays up") {
                Event::Incoming(Packet::PubAck(ack)) => return ack,
                _ => continue,
            }
        }
    })
    .await
    .expect("PUBACK within 5 s");
    assert_eq!(acked.pkid, 1);

    let got = collector.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "ota/board-1/log");
    assert_eq!(got[0].payload.as_ref(), b"{\"outcome\":\"updated\"}");
    assert_eq!(got[0].qos, 1);
    assert!(!got[0].retain);
}

/// The OS error under a reqwest error, if any.
fn io_kind(err: &reqwest::Error) -> Option<std::io::ErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = e.source();
    }
    None
}

#[tokio::test]
async fn proxy_reset_is_a_connection_error_for_reqwest() {
    let gh = github().await;
    let proxy = Proxy::start(gh.addr()).await.expect("proxy starts");
    let base = format!("http://{}", proxy.addr());
    let url = format!("{base}/{OWNER}/{REPO}/releases/download/1.1/firmware.bin");

    // Through the proxy, the JSON's URLs point at the proxy (Host header), so downloads go there too.
    let rel: Value = reqwest::get(format!("{base}/repos/{OWNER}/{REPO}/releases/latest"))
        .await
        .expect("get")
        .json_value()
        .await
        .expect("json");
    assert!(
        rel["assets"][0]["browser_download_url"]
            .as_str()
            .expect("url")
            .starts_with(&base)
    );

    proxy.set_mode(ProxyMode::ResetAfter { bytes: 20_000 });
    let client = reqwest::Client::new();
    let result = async { client.get(&url).send().await?.bytes().await }.await;
    let err = result.expect_err("the reset surfaces");
    assert_eq!(
        io_kind(&err),
        Some(std::io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    assert!(proxy.stats().resets >= 1);

    proxy.set_mode(ProxyMode::Refuse);
    let err = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .expect_err("refused");
    assert!(err.is_request() || err.is_connect(), "{err:?}");
    assert!(proxy.stats().refused >= 1);

    proxy.set_mode(ProxyMode::Down);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .expect_err("down");
    assert!(err.is_connect(), "{err:?}");

    proxy.set_mode(ProxyMode::Pass);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let body = get_body(&url).await;
    assert_eq!(body.len(), 100_000);
}

#[tokio::test]
async fn proxy_in_front_of_the_broker_cuts_and_restores_mqtt() {
    let broker = Broker::start_embedded().expect("broker starts");
    let proxy = Proxy::start(broker.addr).await.expect("proxy starts");
    let via = BrokerAddr::from(proxy.addr());
    let collector = Collector::connect(&via, "ota")
        .await
        .expect("subscribed via proxy");
    assert!(proxy.stats().bytes_up > 0 && proxy.stats().bytes_down > 0);

    proxy.set_mode(ProxyMode::Down);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        Collector::connect(&via, "x").await.is_err(),
        "broker unreachable"
    );
    collector.close().await;
}

/// Addresses of this host other than 127.0.0.1 that a board could be given: 127.0.0.2 (every
/// Linux host answers on all of 127/8, and it is not the address the servers sit on behind
/// the proxies), and the source address of the route to a TEST-NET address when there is one
/// (eth0's, on a machine with a LAN). Connecting a UDP socket sends nothing.
fn board_facing_addresses() -> Vec<std::net::IpAddr> {
    let mut addrs = vec![std::net::IpAddr::from([127, 0, 0, 2])];
    let lan = std::net::UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|s| s.connect(("203.0.113.1", 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    if let Ok(a) = lan
        && !a.ip().is_loopback()
        && !a.ip().is_unspecified()
    {
        addrs.push(a.ip());
    }
    addrs
}

/// Fails if `text` (a JSON body or a `Location`) names any server but `public`.
fn only_names(public: &str, what: &str, text: &str) {
    for wrong in ["127.0.0.1", "localhost", "[::1]"] {
        assert!(!text.contains(wrong), "{what} names {wrong}: {text}");
    }
    for url in text
        .split('"')
        .filter(|t| t.starts_with("http://") || t.starts_with("https://"))
    {
        // The release's `repository` and GitHub's own links are not the board's business, but
        // the mock writes every URL it serves from the `Host` the client used.
        assert!(
            url.starts_with(&format!("http://{public}/")),
            "{what}: {url} is not on {public}"
        );
    }
}

#[tokio::test]
async fn a_world_on_a_lan_address_hands_out_only_urls_a_board_there_reaches() {
    use sim::world::{BrokerChoice, World};
    for ip in board_facing_addresses() {
        let world = World::start_on(&BrokerChoice::Embedded, true, ip)
            .await
            .unwrap_or_else(|e| panic!("world on {ip}: {e}"));
        let public = world.github_proxy.addr();
        eprintln!("world on {ip}: api_base {}", world.api_base());
        assert_eq!(public.ip(), ip);
        assert_eq!(world.board_broker().ip(), ip);
        assert_eq!(world.api_base(), format!("http://{public}"));
        let bytes = image(70_000);
        world.github.set_releases(
            OWNER,
            REPO,
            vec![
                Release::new("1.1", 1_700_000_000)
                    .with_asset(Asset::new("firmware.bin", bytes.clone())),
            ],
        );
        // As the board: redirects followed by hand, one connection per request.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            .expect("client builds");
        let public = public.to_string();

        // Check: the latest release, through the proxy on `ip`.
        let r = http
            .get(format!(
                "{}/repos/{OWNER}/{REPO}/releases/latest",
                world.api_base()
            ))
            .header("user-agent", "board")
            .send()
            .await
            .expect("check");
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.text().await.expect("body");
        only_names(&public, "release JSON", &body);
        let rel: Value = serde_json::from_str(&body).expect("JSON");

        // Download: browser URL → 302 → signed asset URL → bytes, each hop on `ip`.
        let browser = rel["assets"][0]["browser_download_url"]
            .as_str()
            .expect("url");
        let r = http.get(browser).send().await.expect("download");
        assert_eq!(r.status(), StatusCode::FOUND);
        let location = r.headers()[LOCATION].to_str().expect("ascii").to_owned();
        only_names(&public, "download 302", &format!("\"{location}\""));
        let r = http.get(&location).send().await.expect("asset host");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.expect("bytes").as_ref(), bytes.as_slice());

        // The API asset URL (a private repository's path): JSON, then 302 to the bytes.
        let api = rel["assets"][0]["url"].as_str().expect("url");
        let body = get_accepting(&http, api, "application/json")
            .await
            .text()
            .await
            .expect("body");
        only_names(&public, "asset JSON", &body);
        let r = get_accepting(&http, api, "application/octet-stream").await;
        assert_eq!(r.status(), StatusCode::FOUND);
        let location = r.headers()[LOCATION].to_str().expect("ascii").to_owned();
        only_names(&public, "asset API 302", &format!("\"{location}\""));
        let r = http
            .get(&location)
            .header(RANGE, "bytes=60000-")
            .send()
            .await
            .expect("range");
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.bytes().await.expect("bytes").as_ref(), &bytes[60_000..]);

        // Every request went through the board-facing proxy.
        assert_eq!(world.github.requests().len(), 6);
        assert_eq!(world.github_proxy.stats().connections, 6, "{ip}");

        // The broker answers on `ip` too: a subscriber there gets its SUBACK.
        Collector::connect(&BrokerAddr::from(world.board_broker()), "lan-check")
            .await
            .unwrap_or_else(|e| panic!("broker on {ip}: {e}"));
        assert!(world.broker_proxy.stats().connections >= 1);
        world.github.shutdown();
    }
}

#[tokio::test]
async fn a_stage_on_a_lan_address_writes_it_into_the_boards_conf() {
    use sim::scenario::{Scenario, ScenarioError, Stage};
    use sim::world::{BrokerChoice, WorldError};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scenarios");
    let update = Scenario::load(&dir.join("02-update.toml")).expect("scenario");
    let model = sim::bootloader::Model::Espflash;
    let ip = *board_facing_addresses()
        .last()
        .expect("one address at least");
    let stage = Stage::new_on(&update, model, &BrokerChoice::Embedded, ip)
        .await
        .expect("stage");
    let conf = firmware::config::Config::parse(stage.conf.as_bytes())
        .unwrap_or_else(|e| panic!("the core refuses {}: {e:?}", stage.conf));
    let proxy = stage.world.github_proxy.addr();
    assert_eq!(conf.api_base.as_str(), format!("http://{proxy}"));
    assert_eq!(conf.mqtt_host.as_str(), ip.to_string());
    assert_eq!(conf.mqtt_port, stage.world.board_broker().port());

    // No address a board can be given.
    let err = Stage::new_on(&update, model, &BrokerChoice::Embedded, [0, 0, 0, 0].into())
        .await
        .err()
        .expect("0.0.0.0 is refused");
    assert!(
        matches!(err, ScenarioError::World(WorldError::Unspecified(_))),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("0.0.0.0 is no address a board can be given")
    );

    // The scenario gives the board a token (the default), which the core sends over plain
    // http to loopback only: beyond it the conf carries none, and the board downloads
    // through `browser_download_url`.
    assert!(update.board.token);
    assert_eq!(conf.token.is_some(), ip.is_loopback(), "{}", stage.conf);
}
