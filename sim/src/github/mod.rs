//! Mock GitHub: the releases REST API, the 302 to an asset host, and the faults a board must survive.
//!
//! ```text
//!  board ──GET /repos/{o}/{r}/releases/latest──────────────▶ JSON (rate limited, ETag)
//!  board ──GET /{o}/{r}/releases/download/{tag}/{name}─────▶ 302 Location: a ~1 KB signed URL
//!  board ──GET /repos/{o}/{r}/releases/assets/{id}          ▶ 302 (Accept: octet-stream) or JSON
//!        (Accept: application/octet-stream)
//!  board ──GET /github-production-release-asset/{repo_id}/{uuid}?sp=r&sv=…&sig=…&jwt=…
//!        (or …-2e65be/…?X-Amz-…, the older shape; Range, If-Range)──▶ 200/206/416 (not rate limited)
//! ```
//!
//! The signed URLs have GitHub's shapes and lengths and are checked like the real asset host
//! checks them ([`assets`]). Everything a test wants to change while the server runs goes
//! through [`GithubHandle`].

mod assets;
mod faults;
mod releases;

pub use assets::AssetUrl;

pub use faults::{Armed, Fault, FaultKind, Route};
pub use releases::{Asset, Release, iso8601};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use faults::FaultSet;
use releases::{Render, StoredRelease};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Errors of starting the mock server.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// The listening socket could not be bound or inspected.
    #[error("mock GitHub cannot listen on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Current time in Unix seconds. Injected so rate-limit windows follow the simulator's virtual clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The host's wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// What the limiter answers once a client has used up its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    /// GitHub's primary limit: 403 "API rate limit exceeded", `x-ratelimit-remaining: 0`.
    Forbidden,
    /// 429 with `retry-after: N` seconds (what GitHub sends for some abuse limits).
    TooManyRequests {
        /// Seconds in `retry-after`.
        retry_after: u64,
    },
}

/// GitHub's primary ("core") rate limit, counted on `/repos/…` calls only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per window for clients without a token (GitHub: 60), keyed by peer IP.
    pub anonymous: u32,
    /// Requests per window for a client that sends `Authorization` (GitHub: 5000), keyed by token.
    pub authenticated: u32,
    /// Window length; it starts at a client's first request (GitHub: one hour).
    pub window_secs: u64,
    /// The answer once exhausted.
    pub exhausted: Exhausted,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            anonymous: 60,
            authenticated: 5000,
            window_secs: 3600,
            exhausted: Exhausted::Forbidden,
        }
    }
}

/// One request as the server saw it, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path and query, e.g. `/repos/acme/thermostat/releases/latest`.
    pub path: String,
    /// The `Range` header, verbatim.
    pub range: Option<String>,
    /// Response status.
    pub status: u16,
    /// Body bytes handed to the connection so far (a cut or abandoned body counts what went out).
    pub bytes_sent: u64,
    /// The body ended early (fault, or the client went away).
    pub aborted: bool,
}

/// Server configuration at start; everything here can also be changed later on the handle.
#[derive(Clone)]
pub struct GithubConfig {
    /// The primary rate limit.
    pub rate_limit: RateLimit,
    /// Time source of the limiter and of the asset URLs' signatures and expiry.
    pub clock: Clock,
    /// Shape of the signed URLs downloads are redirected to.
    pub asset_url: AssetUrl,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            rate_limit: RateLimit::default(),
            clock: system_clock(),
            asset_url: AssetUrl::default(),
        }
    }
}

/// Per-client window of the limiter.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: u64,
    used: u32,
}

/// Everything the handlers share.
struct Shared {
    addr: SocketAddr,
    releases: Mutex<Vec<StoredRelease>>,
    next_seq: Mutex<u64>,
    faults: Mutex<FaultSet>,
    log: Mutex<Vec<RequestRecord>>,
    rate: Mutex<(RateLimit, HashMap<String, Window>)>,
    clock: Mutex<Clock>,
    public_base: Mutex<Option<String>>,
    asset_url: Mutex<AssetUrl>,
}

/// A poisoned lock only means another handler panicked mid-update; the data is still the
/// best record we have, and the mock must keep answering so the test reports the real failure.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The mock server. Start it with [`MockGithub::start`]; it runs on the current tokio runtime.
pub struct MockGithub;

impl MockGithub {
    /// Listens on 127.0.0.1 with an ephemeral port.
    pub async fn start(config: GithubConfig) -> Result<GithubHandle, GithubError> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Listens on `addr` (HIL: the host's LAN address, so a real board can reach it).
    pub async fn start_on(
        addr: SocketAddr,
        config: GithubConfig,
    ) -> Result<GithubHandle, GithubError> {
        let bind_err = |source| GithubError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let shared = Arc::new(Shared {
            addr: local,
            releases: Mutex::new(Vec::new()),
            next_seq: Mutex::new(0),
            faults: Mutex::new(FaultSet::default()),
            log: Mutex::new(Vec::new()),
            rate: Mutex::new((config.rate_limit, HashMap::new())),
            clock: Mutex::new(config.clock),
            public_base: Mutex::new(None),
            asset_url: Mutex::new(config.asset_url),
        });
        let app = Router::new()
            .route("/repos/{owner}/{repo}/releases/latest", get(latest))
            .route("/repos/{owner}/{repo}/releases", get(list))
            .route("/repos/{owner}/{repo}/releases/assets/{id}", get(asset_api))
            .route(
                "/{owner}/{repo}/releases/download/{tag}/{name}",
                get(download),
            )
            .route(
                &format!("{}/{{repo_id}}/{{uuid}}", assets::PREFIX_RELEASE_ASSETS),
                get(asset_release_assets),
            )
            .route(
                &format!("{}/{{repo_id}}/{{uuid}}", assets::PREFIX_OBJECTS),
                get(asset_objects),
            )
            .layer(middleware::from_fn_with_state(shared.clone(), record))
            .with_state(shared.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            // An accept error ends the task; the handle's users then see refused connections,
            // which is the failure they would get from a dead server anyway.
            let _ = axum::serve(listener, service)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        Ok(GithubHandle {
            shared,
            stop: Arc::new(Mutex::new(Some(stop_tx))),
        })
    }
}

/// Control of a running mock: releases, faults, clock, rate limit, request log.
#[derive(Clone)]
pub struct GithubHandle {
    shared: Arc<Shared>,
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

impl GithubHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://ADDR:PORT` of the mock itself: a test's `api_base`. Behind a [`crate::world::World`]
    /// the board's is the proxy's ([`crate::world::World::api_base`]).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Publishes a release of `owner/repo`; it gets the next release and asset ids.
    pub fn add_release(&self, owner: &str, repo: &str, release: Release) {
        let mut seq = lock(&self.shared.next_seq);
        *seq += 1;
        let s = *seq;
        // Ids look like GitHub's (large, distinct between releases and assets) and are stable
        // for a given publication order, so traces are reproducible.
        let asset_ids = (0..release.assets.len() as u64)
            .map(|i| 200_000 + s * 100 + i)
            .collect();
        lock(&self.shared.releases).push(StoredRelease {
            id: 100_000 + s,
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            seq: s,
            release,
            asset_ids,
        });
    }

    /// Replaces all releases of `owner/repo`.
    pub fn set_releases(&self, owner: &str, repo: &str, releases: Vec<Release>) {
        lock(&self.shared.releases).retain(|r| !(r.owner == owner && r.repo == repo));
        for r in releases {
            self.add_release(owner, repo, r);
        }
    }

    /// Serves `bytes` for the asset `name` of `owner/repo`'s release `tag` from now on, keeping
    /// its release and asset ids, its `updated_at` and its `Last-Modified`: the file was replaced
    /// in storage, and only its `ETag` (and `digest`, if shown) tell. Returns whether the asset
    /// exists. (A re-upload through GitHub gets a new asset id: publish another release.)
    pub fn replace_asset_bytes(
        &self,
        owner: &str,
        repo: &str,
        tag: &str,
        name: &str,
        bytes: impl Into<Bytes>,
    ) -> bool {
        let mut releases = lock(&self.shared.releases);
        let asset = releases
            .iter_mut()
            .filter(|r| r.owner == owner && r.repo == repo && r.release.tag_name == tag)
            .flat_map(|r| r.release.assets.iter_mut())
            .find(|a| a.name == name);
        match asset {
            Some(a) => {
                a.bytes = bytes.into();
                true
            }
            None => false,
        }
    }

    /// Replaces the armed faults (`Fault` converts to "always").
    pub fn set_faults(&self, faults: impl IntoIterator<Item = impl Into<Armed>>) {
        lock(&self.shared.faults).set(faults.into_iter().map(Into::into).collect());
    }

    /// Arms one more fault.
    pub fn arm(&self, fault: impl Into<Armed>) {
        lock(&self.shared.faults).push(fault.into());
    }

    /// Disarms every fault (firing counters are kept).
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).set(Vec::new());
    }

    /// How many times faults of this kind fired since start.
    pub fn fired(&self, kind: FaultKind) -> u64 {
        lock(&self.shared.faults).fired(kind)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// Replaces the limiter's time source (the simulator's virtual clock).
    pub fn set_clock(&self, clock: Clock) {
        *lock(&self.shared.clock) = clock;
    }

    /// Changes the rate limit; windows already open keep their counts.
    pub fn set_rate_limit(&self, limit: RateLimit) {
        lock(&self.shared.rate).0 = limit;
    }

    /// Forgets every client's window (as if an hour passed for everyone).
    pub fn reset_rate_limit(&self) {
        lock(&self.shared.rate).1.clear();
    }

    /// Base of the URLs written into JSON and `Location`. By default the request's `Host`, so a
    /// board that reaches the mock through [`crate::proxy`] downloads through the proxy too.
    pub fn set_public_base(&self, base: Option<String>) {
        *lock(&self.shared.public_base) = base;
    }

    /// Which signed-URL shape downloads are redirected to from now on (URLs already issued
    /// stay valid until they expire).
    pub fn set_asset_url(&self, shape: AssetUrl) {
        *lock(&self.shared.asset_url) = shape;
    }

    /// Stops accepting connections (open ones finish).
    pub fn shutdown(&self) {
        if let Some(tx) = lock(&self.stop).take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request log

/// Logs each request and wraps the response body so the bytes actually sent are counted.
async fn record(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let range = header_str(req.headers(), header::RANGE).map(str::to_owned);
    let is_head = req.method() == Method::HEAD;
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let index = {
        let mut log = lock(&shared.log);
        log.push(RequestRecord {
            method,
            path,
            range,
            status,
            bytes_sent: 0,
            aborted: false,
        });
        log.len() - 1
    };
    if is_head {
        return response;
    }
    let (parts, body) = response.into_parts();
    let expected = header_str(&parts.headers, header::CONTENT_LENGTH)
        .and_then(|v| v.parse().ok())
        .or(body.size_hint().exact());
    let counted = Counted {
        inner: body,
        shared,
        index,
        ended: false,
        expected,
        sent: 0,
    };
    Response::from_parts(parts, Body::new(counted))
}

/// A body that reports every frame it hands to hyper into the request log.
struct Counted {
    inner: Body,
    shared: Arc<Shared>,
    index: usize,
    /// Set when the inner body reported its end; a stream body cannot say so afterwards.
    ended: bool,
    /// The announced Content-Length: hyper stops polling once it is sent, so reaching it is
    /// the end even if the body never got to say so.
    expected: Option<u64>,
    sent: u64,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                    if let Some(rec) = lock(&this.shared.log).get_mut(this.index) {
                        rec.bytes_sent = this.sent;
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.ended = true;
                if let Some(rec) = lock(&this.shared.log).get_mut(this.index) {
                    rec.aborted = true;
                }
            }
            Poll::Ready(None) => this.ended = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        // Forwarded so hyper still writes Content-Length for fixed-size bodies.
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // Dropped before the end: the client closed the connection mid-body.
        let complete = self.ended
            || self.inner.is_end_stream()
            || self.expected.is_some_and(|n| self.sent >= n);
        if !complete && let Some(rec) = lock(&self.shared.log).get_mut(self.index) {
            rec.aborted = true;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Where the client believes the server is: explicit override, else its `Host`, else our socket.
fn base_url(shared: &Shared, headers: &HeaderMap) -> String {
    if let Some(b) = lock(&shared.public_base).clone() {
        return b;
    }
    match header_str(headers, header::HOST) {
        Some(host) => format!("http://{host}"),
        None => format!("http://{}", shared.addr),
    }
}

fn render<'a>(shared: &Shared, base: &'a str) -> Render<'a> {
    let mut f = lock(&shared.faults);
    let size_delta = match f.take(|f| matches!(f, Fault::WrongSize { .. })) {
        Some(Fault::WrongSize { delta }) => delta,
        _ => 0,
    };
    let wrong_hash = f.take(|f| *f == Fault::WrongHash).is_some();
    Render {
        base,
        size_delta,
        wrong_hash,
    }
}

fn has_token(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION)
}

/// GitHub's JSON error body.
fn message(status: StatusCode, text: &str, docs: &str) -> Response {
    let body = json!({
        "message": text,
        "documentation_url": docs,
        "status": status.as_u16().to_string(),
    });
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let text = body.to_string();
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        text,
    )
        .into_response()
}

fn not_found() -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Not Found",
        "https://docs.github.com/rest/releases/releases#get-the-latest-release",
    )
}

fn server_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    message(
        status,
        status.canonical_reason().unwrap_or("Server Error"),
        "https://www.githubstatus.com",
    )
}

fn take_server_error(shared: &Shared, route: Route) -> Option<Response> {
    let fired = lock(&shared.faults)
        .take(|f| matches!(f, Fault::ServerError { on, .. } if *on == route || *on == Route::Any));
    match fired {
        Some(Fault::ServerError { status, .. }) => Some(server_error(status)),
        _ => None,
    }
}

/// Releases of one repository, newest first; drafts only for clients with a token.
fn visible(shared: &Shared, owner: &str, repo: &str, token: bool) -> Vec<StoredRelease> {
    let mut v: Vec<StoredRelease> = lock(&shared.releases)
        .iter()
        .filter(|r| r.owner == owner && r.repo == repo && (token || !r.release.draft))
        .cloned()
        .collect();
    v.sort_by_key(|r| std::cmp::Reverse((r.release.published_at, r.seq)));
    v
}

fn find_asset(shared: &Shared, id: u64) -> Option<(StoredRelease, usize)> {
    lock(&shared.releases).iter().find_map(|r| {
        r.asset_ids
            .iter()
            .position(|a| *a == id)
            .map(|i| (r.clone(), i))
    })
}

/// The signed asset-host URL a download redirects to, issued now by the mock's clock.
fn asset_location(shared: &Shared, base: &str, rel: &StoredRelease, index: usize) -> String {
    let shape = *lock(&shared.asset_url);
    let now = (lock(&shared.clock).clone())();
    let asset = assets::AssetRef {
        owner: &rel.owner,
        repo: &rel.repo,
        asset_id: rel.asset_ids[index],
        name: &rel.release.assets[index].name,
    };
    format!("{base}{}", assets::signed_path(shape, &asset, now))
}

/// github.com's `Content-Security-Policy` (3.4 KB, as on its 302s for release downloads): with
/// a ~1 KB `Location` it makes a 4.9 KB response head, which a client with a 4 KiB header
/// buffer cannot read. Rebuilt from public captures (`fixtures/github/README.md`).
fn github_web_csp() -> String {
    let results: Vec<String> = (0..20)
        .map(|i| format!("productionresultssa{i}.blob.core.windows.net/"))
        .collect();
    [
        "default-src 'none'",
        "base-uri 'self'",
        "child-src github.githubassets.com github.com/assets-cdn/worker/ github.com/assets/ gist.github.com/assets-cdn/worker/",
        &format!(
            "connect-src 'self' uploads.github.com www.githubstatus.com collector.github.com raw.githubusercontent.com \
             api.github.com github-cloud.s3.amazonaws.com github-production-repository-file-5c1aeb.s3.amazonaws.com \
             github-production-upload-manifest-file-7fdce7.s3.amazonaws.com github-production-user-asset-6210df.s3.amazonaws.com \
             *.rel.tunnels.api.visualstudio.com wss://*.rel.tunnels.api.visualstudio.com objects-origin.githubusercontent.com \
             copilot-proxy.githubusercontent.com proxy.individual.githubcopilot.com proxy.business.githubcopilot.com \
             proxy.enterprise.githubcopilot.com *.actions.githubusercontent.com wss://*.actions.githubusercontent.com {} \
             github-production-repository-image-32fea6.s3.amazonaws.com github-production-release-asset-2e65be.s3.amazonaws.com \
             insights.github.com wss://alive.github.com api.githubcopilot.com api.individual.githubcopilot.com \
             api.business.githubcopilot.com api.enterprise.githubcopilot.com",
            results.join(" ")
        ),
        "font-src github.githubassets.com",
        "form-action 'self' github.com gist.github.com copilot-workspace.githubnext.com objects-origin.githubusercontent.com",
        "frame-ancestors 'none'",
        "frame-src viewscreen.githubusercontent.com notebooks.githubusercontent.com",
        "img-src 'self' data: blob: github.githubassets.com media.githubusercontent.com camo.githubusercontent.com \
         identicons.github.com avatars.githubusercontent.com private-avatars.githubusercontent.com github-cloud.s3.amazonaws.com \
         objects.githubusercontent.com release-assets.githubusercontent.com secured-user-images.githubusercontent.com/ \
         user-images.githubusercontent.com/ private-user-images.githubusercontent.com opengraph.githubassets.com \
         copilotprodattachments.blob.core.windows.net/github-production-copilot-attachments/ \
         github-production-user-asset-6210df.s3.amazonaws.com customer-stories-feed.github.com spotlights-feed.github.com \
         objects-origin.githubusercontent.com *.githubusercontent.com",
        "manifest-src 'self'",
        "media-src github.com user-images.githubusercontent.com/ secured-user-images.githubusercontent.com/ \
         private-user-images.githubusercontent.com github-production-user-asset-6210df.s3.amazonaws.com gist.github.com",
        "script-src github.githubassets.com",
        "style-src 'unsafe-inline' github.githubassets.com",
        "upgrade-insecure-requests",
        "worker-src github.githubassets.com github.com/assets-cdn/worker/ github.com/assets/ gist.github.com/assets-cdn/worker/",
    ]
    .join("; ")
}

/// A 302 as github.com sends it for a release download: the API's redirect plus github.com's
/// page headers, the long `Content-Security-Policy` among them.
fn web_redirect(location: &str) -> Response {
    let mut r = redirect(location);
    let h = r.headers_mut();
    h.insert(
        header::VARY,
        HeaderValue::from_static(
            "X-PJAX, X-PJAX-Container, Turbo-Visit, Turbo-Frame, X-Requested-With,Accept-Encoding, Accept, X-Requested-With",
        ),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubdomains; preload"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("deny"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_XSS_PROTECTION, HeaderValue::from_static("0"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer-when-downgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(&github_web_csp()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

/// A 302 as github.com and api.github.com send it: empty HTML body, `Location`, no caching.
fn redirect(location: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

// ---------------------------------------------------------------------------------------------
// The JSON API (rate limited)

/// What an API route answers before ETag and rate-limit handling.
enum ApiAnswer {
    Json(Value),
    Other(Response),
}

/// Rate limiting, ETag/304, truncation and the `x-ratelimit-*` headers around an API answer.
fn api(
    shared: &Shared,
    headers: &HeaderMap,
    peer: SocketAddr,
    answer: impl FnOnce() -> ApiAnswer,
) -> Response {
    if let Some(r) = secondary_rate_limit(shared) {
        return r;
    }
    let clock = lock(&shared.clock).clone();
    let now = clock();
    let key = match header_str(headers, header::AUTHORIZATION) {
        Some(token) => format!("token:{token}"),
        None => format!("ip:{}", peer.ip()),
    };
    let (limit, w, window_secs, exhausted) = open_window(shared, headers, &key, now);
    let reset = w.start + window_secs;

    let mut response = if w.used >= limit {
        lock(&shared.faults).count(FaultKind::RateLimited);
        rate_limit_exceeded(exhausted, peer)
    } else if let Some(r) = take_server_error(shared, Route::Api) {
        r
    } else {
        match answer() {
            ApiAnswer::Other(r) => r,
            ApiAnswer::Json(value) => json_with_etag(shared, headers, &value),
        }
    };

    // A 304 does not count against the primary limit when the request was authorized, as
    // GitHub documents; an unauthenticated 304 counts like any other answer.
    let free = response.status() == StatusCode::NOT_MODIFIED && has_token(headers);
    let counted = !free && w.used < limit;
    let used = if counted {
        let mut rate = lock(&shared.rate);
        match rate.1.get_mut(&key) {
            Some(win) => {
                win.used += 1;
                win.used
            }
            None => w.used + 1,
        }
    } else {
        w.used
    };
    let h = response.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(limit.saturating_sub(used)),
    );
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    h.insert("x-ratelimit-used", HeaderValue::from(used));
    h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    // GitHub dates every answer; with `x-ratelimit-reset` it tells a client without a clock how
    // long to wait. From the limiter's clock, so it follows the simulator's virtual time.
    if let Ok(date) = HeaderValue::from_str(&releases::http_date(now)) {
        h.insert(header::DATE, date);
    }
    response
}

/// The 429 of a queued secondary-rate-limit fault, if one is due.
fn secondary_rate_limit(shared: &Shared) -> Option<Response> {
    let secondary = lock(&shared.faults).take(|f| matches!(f, Fault::SecondaryRateLimit { .. }));
    let Some(Fault::SecondaryRateLimit { retry_after }) = secondary else {
        return None;
    };
    let mut r = message(
        StatusCode::TOO_MANY_REQUESTS,
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    Some(r)
}

/// The client's limit and its window (a new one once the old has run out), with the window
/// length and the answer once exhausted.
fn open_window(
    shared: &Shared,
    headers: &HeaderMap,
    key: &str,
    now: u64,
) -> (u32, Window, u64, Exhausted) {
    let mut rate = lock(&shared.rate);
    let (cfg, windows) = &mut *rate;
    let limit = if has_token(headers) {
        cfg.authenticated
    } else {
        cfg.anonymous
    };
    let w = windows.entry(key.to_string()).or_insert(Window {
        start: now,
        used: 0,
    });
    if now >= w.start + cfg.window_secs {
        *w = Window {
            start: now,
            used: 0,
        };
    }
    (limit, *w, cfg.window_secs, cfg.exhausted)
}

/// GitHub's answer to a client that has used up its primary rate limit.
fn rate_limit_exceeded(exhausted: Exhausted, peer: SocketAddr) -> Response {
    match exhausted {
        Exhausted::Forbidden => message(
            StatusCode::FORBIDDEN,
            &format!(
                "API rate limit exceeded for {}. (But here's the good news: Authenticated \
                 requests get a higher rate limit. Check out the documentation for more details.)",
                peer.ip()
            ),
            "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting",
        ),
        Exhausted::TooManyRequests { retry_after } => {
            let mut r = message(
                StatusCode::TOO_MANY_REQUESTS,
                "API rate limit exceeded",
                "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            r
        }
    }
}

/// A JSON answer with its weak ETag: 304 when `If-None-Match` names it, else the body (cut in
/// half when a truncation fault is due).
fn json_with_etag(shared: &Shared, headers: &HeaderMap, value: &Value) -> Response {
    let text = value.to_string();
    let etag = format!("W/\"{}\"", hex::encode(Sha256::digest(text.as_bytes())));
    let matches = header_str(headers, header::IF_NONE_MATCH)
        .is_some_and(|inm| inm.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = if lock(&shared.faults)
            .take(|f| *f == Fault::TruncatedJson)
            .is_some()
        {
            // Cut on a byte boundary: the result need not even be valid UTF-8.
            let half = text.len() / 2;
            Bytes::from(text).slice(..half)
        } else {
            Bytes::from(text)
        };
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            body,
        )
            .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// Takes a queued "no release" fault; true when one was due.
fn take_no_release(shared: &Shared) -> bool {
    lock(&shared.faults)
        .take(|f| *f == Fault::NoRelease)
        .is_some()
}

async fn latest(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    api(&shared, &headers, peer, || {
        if take_no_release(&shared) {
            return ApiAnswer::Other(not_found());
        }
        let base = base_url(&shared, &headers);
        // "Latest" is never a draft or a prerelease, even for a client allowed to see drafts.
        let newest = visible(&shared, &owner, &repo, false)
            .into_iter()
            .find(|r| !r.release.prerelease);
        match newest {
            Some(r) => ApiAnswer::Json(r.to_json(&render(&shared, &base))),
            None => ApiAnswer::Other(not_found()),
        }
    })
}

async fn list(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    api(&shared, &headers, peer, || {
        if take_no_release(&shared) {
            return ApiAnswer::Json(json!([]));
        }
        let base = base_url(&shared, &headers);
        let r = render(&shared, &base);
        let all: Vec<Value> = visible(&shared, &owner, &repo, has_token(&headers))
            .iter()
            .map(|rel| rel.to_json(&r))
            .collect();
        ApiAnswer::Json(Value::Array(all))
    })
}

async fn asset_api(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((owner, repo, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    api(&shared, &headers, peer, || {
        let found = id
            .parse::<u64>()
            .ok()
            .and_then(|id| find_asset(&shared, id))
            .filter(|(r, _)| r.owner == owner && r.repo == repo);
        let Some((rel, index)) = found else {
            return ApiAnswer::Other(not_found());
        };
        let base = base_url(&shared, &headers);
        let wants_bytes = header_str(&headers, header::ACCEPT)
            .is_some_and(|a| a.contains("application/octet-stream"));
        if wants_bytes {
            let loc = asset_location(&shared, &base, &rel, index);
            ApiAnswer::Other(redirect(&loc))
        } else {
            ApiAnswer::Json(rel.asset_json(index, &render(&shared, &base)))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Downloads (not rate limited)

async fn download(
    State(shared): State<Arc<Shared>>,
    Path((owner, repo, tag, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = take_server_error(&shared, Route::Download) {
        return r;
    }
    let base = base_url(&shared, &headers);
    if lock(&shared.faults)
        .take(|f| *f == Fault::RedirectLoop)
        .is_some()
    {
        return web_redirect(&format!(
            "{base}/{owner}/{repo}/releases/download/{tag}/{name}"
        ));
    }
    let found = lock(&shared.releases).iter().find_map(|r| {
        if r.owner != owner || r.repo != repo || r.release.tag_name != tag {
            return None;
        }
        let i = r.release.assets.iter().position(|a| a.name == name)?;
        Some((r.clone(), i))
    });
    match found {
        Some((rel, i)) => web_redirect(&asset_location(&shared, &base, &rel, i)),
        // github.com answers a missing download with a plain-text 404, not API JSON.
        None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
}

/// A `Range` header reduced to what the CDN serves.
#[derive(Debug, PartialEq, Eq)]
enum RangeReq {
    /// No usable range: the whole file (multi-range and malformed headers are ignored, RFC 9110).
    Full,
    /// Inclusive byte range within the file.
    Part(u64, u64),
    /// No byte of the range exists.
    Unsatisfiable,
}

fn parse_range(header: Option<&str>, len: u64) -> RangeReq {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last N bytes.
        return match b.parse::<u64>() {
            Ok(0) => RangeReq::Unsatisfiable,
            Ok(n) if len > 0 => RangeReq::Part(len.saturating_sub(n), len - 1),
            Ok(_) => RangeReq::Unsatisfiable,
            Err(_) => RangeReq::Full,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeReq::Full;
    };
    let end = if b.is_empty() {
        None
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => Some(e),
            _ => return RangeReq::Full,
        }
    };
    if start >= len {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Part(start, end.map_or(len - 1, |e| e.min(len - 1)))
}

/// How the CDN paces one body, decided from the armed faults when the response starts.
#[derive(Clone, Copy, Debug, Default)]
struct Pacing {
    chunk: usize,
    delay: Option<Duration>,
    stall: Option<(u64, Duration)>,
    cut: Option<u64>,
}

async fn asset_release_assets(
    State(shared): State<Arc<Shared>>,
    Path((repo_id, uuid)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    asset_host(
        &shared,
        AssetUrl::ReleaseAssets,
        &repo_id,
        &uuid,
        query,
        &headers,
    )
}

async fn asset_objects(
    State(shared): State<Arc<Shared>>,
    Path((repo_id, uuid)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    asset_host(&shared, AssetUrl::Objects, &repo_id, &uuid, query, &headers)
}

/// An XML error of the storage backend behind the asset host.
fn storage_error(status: StatusCode, code: &str, body: String) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response();
    if let Ok(v) = HeaderValue::from_str(code) {
        r.headers_mut().insert("x-ms-error-code", v);
    }
    r
}

/// The asset host: checks the signed URL, then serves the bytes with Range / If-Range.
fn asset_host(
    shared: &Shared,
    shape: AssetUrl,
    repo_id: &str,
    uuid: &str,
    query: Option<String>,
    headers: &HeaderMap,
) -> Response {
    if let Some(r) = take_server_error(shared, Route::Download) {
        return r;
    }
    let found = lock(&shared.releases).iter().find_map(|r| {
        if assets::repo_id(&r.owner, &r.repo).to_string() != repo_id {
            return None;
        }
        let i = r
            .asset_ids
            .iter()
            .position(|id| assets::object_uuid(*id) == uuid)?;
        Some((r.clone(), i))
    });
    let Some((rel, index)) = found else {
        let body =
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>BlobNotFound</Code>\
                    <Message>The specified blob does not exist.</Message></Error>"
                .to_owned();
        return storage_error(StatusCode::NOT_FOUND, "BlobNotFound", body);
    };
    let path = format!("{}/{repo_id}/{uuid}", shape.prefix());
    let now = (lock(&shared.clock).clone())();
    if let Err(refusal) = assets::verify(shape, &path, query.as_deref().unwrap_or(""), now) {
        let body = assets::refusal_body(shape, &refusal);
        let code = match (shape, &refusal) {
            (AssetUrl::ReleaseAssets, _) => "AuthenticationFailed",
            (AssetUrl::Objects, assets::Refusal::BadSignature(_)) => "SignatureDoesNotMatch",
            (AssetUrl::Objects, assets::Refusal::Expired { .. }) => "AccessDenied",
        };
        return storage_error(StatusCode::FORBIDDEN, code, body);
    }
    let asset = &rel.release.assets[index];
    let len = asset.bytes.len() as u64;
    let etag = assets::etag(&asset.bytes);
    // The asset was uploaded 30 s before the release was published (see `asset_json`).
    let last_modified = releases::http_date(rel.release.published_at.saturating_sub(30));
    let range_header = header_str(headers, header::RANGE).filter(|_| {
        assets::if_range_holds(header_str(headers, header::IF_RANGE), &etag, &last_modified)
    });
    let range = parse_range(range_header, len);
    let (status, start, end) = match range {
        RangeReq::Full => (StatusCode::OK, 0, len),
        RangeReq::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e + 1),
        RangeReq::Unsatisfiable => {
            let body = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>InvalidRange</Code>\
                        <Message>The range specified is invalid for the current size of the resource.</Message></Error>"
                .to_owned();
            let mut r = storage_error(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", body);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    // `start..end` lies within the asset: parse_range clamps both ends to `len`.
    let data = asset.bytes.slice(start as usize..end as usize);

    let mut pacing = Pacing {
        chunk: 16 * 1024,
        ..Pacing::default()
    };
    {
        let mut f = lock(&shared.faults);
        if let Some(Fault::CutBodyAfter { bytes }) =
            f.take(|f| matches!(f, Fault::CutBodyAfter { .. }))
        {
            pacing.cut = Some(bytes);
        }
        if let Some(Fault::Stall { after, pause }) = f.take(|f| matches!(f, Fault::Stall { .. })) {
            pacing.stall = Some((after, pause));
        }
        if let Some(Fault::Trickle { chunk, delay }) =
            f.take(|f| matches!(f, Fault::Trickle { .. }))
        {
            pacing.chunk = chunk.max(1);
            pacing.delay = Some(delay);
        }
    }

    let mut r = Response::new(paced_body(data.clone(), pacing));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&asset.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    // Explicit, because a streamed body has no size hint and hyper would switch to chunked.
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    // What Azure Blob storage adds; clients ignore them, but a client must cope with the bulk.
    h.insert(
        header::SERVER,
        HeaderValue::from_static("Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0"),
    );
    h.insert("x-ms-version", HeaderValue::from_static("2025-05-05"));
    h.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
    h.insert("x-ms-lease-status", HeaderValue::from_static("unlocked"));
    h.insert("x-ms-lease-state", HeaderValue::from_static("available"));
    h.insert("x-ms-server-encrypted", HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={}", asset.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    r
}

/// Streams `data` in chunks, applying stall, trickle and cut. A cut ends the stream with an
/// error, which makes hyper drop the connection short of the announced Content-Length.
fn paced_body(data: Bytes, p: Pacing) -> Body {
    struct St {
        data: Bytes,
        pos: usize,
        p: Pacing,
        stalled: bool,
        done: bool,
    }
    let st = St {
        data,
        pos: 0,
        p,
        stalled: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.done || st.pos >= st.data.len() {
            return None;
        }
        let pos = st.pos as u64;
        if st.p.cut.is_some_and(|c| pos >= c) {
            st.done = true;
            // Give hyper a Pending so it flushes the head and the bytes so far; an error on a
            // body that never yielded to the runtime would discard its whole write buffer.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let err = std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "mock GitHub fault: body cut",
            );
            return Some((Err(err), st));
        }
        if let Some((after, pause)) = st.p.stall
            && !st.stalled
            && pos >= after
        {
            st.stalled = true;
            tokio::time::sleep(pause).await;
        }
        if let Some(delay) = st.p.delay
            && pos > 0
        {
            tokio::time::sleep(delay).await;
        }
        let mut end = (pos + st.p.chunk as u64).min(st.data.len() as u64);
        if let Some(c) = st.p.cut {
            end = end.min(c);
        }
        if let Some((after, _)) = st.p.stall
            && !st.stalled
        {
            end = end.min(after);
        }
        let chunk = st.data.slice(st.pos..end as usize);
        st.pos = end as usize;
        Some((Ok::<_, std::io::Error>(chunk), st))
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 10), RangeReq::Full);
        assert_eq!(parse_range(Some("bytes=3-"), 10), RangeReq::Part(3, 9));
        assert_eq!(parse_range(Some("bytes=3-5"), 10), RangeReq::Part(3, 5));
        assert_eq!(parse_range(Some("bytes=3-50"), 10), RangeReq::Part(3, 9));
        assert_eq!(parse_range(Some("bytes=-4"), 10), RangeReq::Part(6, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeReq::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-3"), 10), RangeReq::Full);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), RangeReq::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeReq::Full);
    }
}
