//! Executes one `Action::HttpGet`: DNS, TCP, optional TLS, request, streamed response.
//!
//! The glue does not interpret the response: every header is handed to the
//! core's `ResponseHead`, every body chunk to `handle_response_body`, and a 3xx
//! is *not* followed here (the core decides whether and where to go next, and
//! whether the token may travel there). One request per connection
//! (`Connection: close`), so a retry is always a fresh connection.
//!
//! ```text
//!  url ─► DNS ─► TCP connect ─► [TLS handshake, roots from certs/] ─► GET
//!                                                                       │
//!  core ◄── Head(status + headers) ◄── Body(chunk) … ◄── End ◄──────────┘
//!        (each step may fail: Dns · Connect · Tls · Reset · Timeout)
//! ```

use core::ffi::CStr;
use core::pin::pin;

use embassy_futures::select::{Either, select};
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_net::{IpAddress, Ipv4Address, Stack};
use embassy_time::{Duration, Instant as EmbassyInstant, Timer, with_timeout};
use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use firmware::Instant;
use firmware::http::{HttpRequest, ResponseHead};
use firmware::machine::STALL_MS;
use heapless::{String, Vec};
use mbedtls_rs::Session;
use nourl::{Url, UrlScheme};
use reqwless::client::HttpConnection;
use reqwless::request::{Request, RequestBuilder};

use super::tls::TlsContext;

/// Backstop for a silent connection. The core abandons a stalled request
/// itself after `STALL_MS` (it sends `AbortHttp`); this only guarantees that
/// no socket outlives that by much, whatever the core is doing.
const STALL: Duration = Duration::from_millis(2 * STALL_MS);
/// TCP connect (SYN → ESTABLISHED) limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// TLS handshake limit (software ECDHE/RSA on a 160 MHz core takes seconds).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How an exchange failed below HTTP; `name()` is what the core is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// The host name did not resolve (or the URL did not parse).
    Dns,
    /// TCP connect refused or unreachable.
    Connect,
    /// TLS handshake failed (certificate not trusted, wrong host name, protocol).
    Tls,
    /// The connection broke mid-exchange, or the response was malformed.
    Reset,
    /// A connect, handshake or read took too long.
    Timeout,
}

impl TransportError {
    /// Whose doing it is, for the core's trial rules: only a failed handshake is the image's.
    pub fn kind(self) -> firmware::http::Transport {
        match self {
            TransportError::Tls => firmware::http::Transport::Tls,
            _ => firmware::http::Transport::Network,
        }
    }

    /// The word passed to `Updater::handle_transport_error`.
    pub fn name(self) -> &'static str {
        match self {
            TransportError::Dns => "dns",
            TransportError::Connect => "connect",
            TransportError::Tls => "tls",
            TransportError::Reset => "reset",
            TransportError::Timeout => "timeout",
        }
    }
}

/// Room for a response's status line and headers.
pub const HEAD_LEN: usize = 16 * 1024;

/// Buffers for one HTTP connection, reused by every request (MQTT has its own).
pub struct Buffers {
    /// TCP receive window.
    pub tcp_rx: [u8; 8192],
    /// TCP send buffer.
    pub tcp_tx: [u8; 2048],
    /// Status line + headers. github.com's 302 for a release download carries its whole page
    /// header set (content-security-policy alone is ~2 KiB) plus a ~1 KiB signed Location:
    /// about 4.9 KiB, more than the 4 KiB this once was. 16 KiB leaves room for GitHub to grow.
    pub head: [u8; HEAD_LEN],
    /// One body chunk handed to the core.
    pub chunk: [u8; 2048],
}

impl Buffers {
    /// All zeroes (placed in `.bss` by the caller's `StaticCell`).
    pub const fn new() -> Self {
        Self {
            tcp_rx: [0; 8192],
            tcp_tx: [0; 2048],
            head: [0; HEAD_LEN],
            chunk: [0; 2048],
        }
    }
}

/// What the transfer reports, in order: one `Head`, any number of `Body`, one
/// `End`; `Deadline` whenever the core's own deadline passes meanwhile.
pub enum Event<'a> {
    /// Status and headers are in.
    Head(&'a ResponseHead),
    /// The next piece of the body.
    Body(&'a [u8]),
    /// The body is complete.
    End,
    /// The core's `poll_timeout` deadline passed during the transfer.
    Deadline,
}

/// The driver's answer to each [`Event`].
pub enum Flow {
    /// Keep going; wake up at this core deadline if nothing arrives first.
    Continue(Option<Instant>),
    /// The core moved on (it asked for another request, a reboot, …): drop
    /// the connection now.
    Abort,
}

/// Static request parameters supplied by the driver.
pub struct Context<'a> {
    /// The IP stack.
    pub stack: Stack<'static>,
    /// TLS (roots and the mbedtls instance).
    pub tls: &'a TlsContext,
    /// The GitHub token, sent only when the core sets `authorize`.
    pub token: Option<&'a str>,
}

/// Performs `req`, reporting through `on_event`. `Ok(())` covers both a
/// complete response and an abort asked for by `on_event`. `deadline` is the
/// core's `poll_timeout` when the request starts: the core's timers (LED
/// patterns, its own stall limits) keep running during every phase.
pub async fn get(
    cx: &Context<'_>,
    bufs: &mut Buffers,
    req: &HttpRequest,
    mut deadline: Option<Instant>,
    on_event: &mut dyn FnMut(Event<'_>) -> Flow,
) -> Result<(), TransportError> {
    let Buffers {
        tcp_rx,
        tcp_tx,
        head,
        chunk,
    } = bufs;
    // A URL that does not parse can only come from a bad redirect or config;
    // the core hears about it as an unreachable host.
    let url = Url::parse(req.url.as_str()).map_err(|_| TransportError::Dns)?;

    // `localhost` is this board (RFC 6761): never asked of the network's DNS, so a token that
    // conf.json allows over plain http to it cannot be sent anywhere else.
    let addr = if url.host().eq_ignore_ascii_case("localhost") {
        IpAddress::Ipv4(Ipv4Address::new(127, 0, 0, 1))
    } else {
        let Some(addrs) = serviced(
            cx.stack.dns_query(url.host(), DnsQueryType::A),
            &mut deadline,
            on_event,
        )
        .await
        else {
            return Ok(());
        };
        let addrs = addrs.map_err(|_| TransportError::Dns)?;
        *addrs.first().ok_or(TransportError::Dns)?
    };

    let mut socket = TcpSocket::new(cx.stack, tcp_rx, tcp_tx);
    socket.set_timeout(Some(STALL));
    let connect = with_timeout(
        CONNECT_TIMEOUT,
        socket.connect((addr, url.port_or_default())),
    );
    match serviced(connect, &mut deadline, on_event).await {
        None => return Ok(()),
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(_))) => return Err(TransportError::Connect),
        Some(Err(_)) => return Err(TransportError::Timeout),
    }

    let mut server_name: Vec<u8, 256> = Vec::new();
    let mut conn = if url.scheme() == UrlScheme::HTTPS {
        server_name
            .extend_from_slice(url.host().as_bytes())
            .map_err(|_| TransportError::Dns)?;
        server_name.push(0).map_err(|_| TransportError::Dns)?;
        let name = CStr::from_bytes_with_nul(&server_name).map_err(|_| TransportError::Dns)?;
        let handshake = with_timeout(HANDSHAKE_TIMEOUT, cx.tls.connect(&mut socket, name));
        match serviced(handshake, &mut deadline, on_event).await {
            None => return Ok(()),
            Some(Ok(Ok(session))) => Conn::Tls(session),
            // The connection broke during the handshake: the network, not the image.
            Some(Ok(Err(mbedtls_rs::SessionError::Io(_)))) => return Err(TransportError::Reset),
            Some(Ok(Err(_))) => return Err(TransportError::Tls),
            Some(Err(_)) => return Err(TransportError::Timeout),
        }
    } else {
        Conn::Plain(&mut socket)
    };

    let result = exchange(cx, &url, req, &mut conn, head, chunk, deadline, on_event).await;
    if let Conn::Tls(session) = &mut conn {
        // Best effort close_notify; the TCP connection is dropped either way.
        let _ = with_timeout(Duration::from_secs(2), session.close()).await;
    }
    drop(conn);
    socket.abort();
    let _ = with_timeout(Duration::from_secs(1), socket.flush()).await;
    result
}

/// Awaits `fut` while serving the core's deadlines: each time `deadline`
/// passes, `on_event(Deadline)` runs (the core's `handle_timeout`) and the
/// deadline is refreshed. `fut` is never cancelled by a deadline, only by an
/// `Abort` (then `None`).
pub async fn serviced<F: Future>(
    fut: F,
    deadline: &mut Option<Instant>,
    on_event: &mut dyn FnMut(Event<'_>) -> Flow,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    loop {
        let Some(at) = *deadline else {
            return Some(fut.await);
        };
        match select(fut.as_mut(), Timer::at(to_embassy(at))).await {
            Either::First(out) => return Some(out),
            Either::Second(()) => match on_event(Event::Deadline) {
                Flow::Abort => return None,
                Flow::Continue(d) => *deadline = d,
            },
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn exchange<C: Read + Write>(
    cx: &Context<'_>,
    url: &Url<'_>,
    req: &HttpRequest,
    conn: &mut C,
    head_buf: &mut [u8],
    chunk: &mut [u8],
    mut deadline: Option<Instant>,
    on_event: &mut dyn FnMut(Event<'_>) -> Flow,
) -> Result<(), TransportError> {
    // Header values the request borrows.
    let mut range: String<24> = String::new();
    let mut auth: String<160> = String::new();
    let mut headers: Vec<(&str, &str), 8> = Vec::new();
    let _ = headers.push((
        "User-Agent",
        concat!("esp32-ota/", env!("CARGO_PKG_VERSION")),
    ));
    let _ = headers.push(("Accept", req.accept.header_value()));
    let _ = headers.push(("Connection", "close"));
    if let Some(from) = req.range_from {
        let _ = core::fmt::write(&mut range, format_args!("bytes={}-", from));
        let _ = headers.push(("Range", range.as_str()));
        if let Some(validator) = req.if_range.as_deref() {
            let _ = headers.push(("If-Range", validator));
        }
    }
    // The release answer the board already acted on: GitHub answers 304 without a body.
    if let Some(etag) = req.if_none_match.as_deref() {
        let _ = headers.push(("If-None-Match", etag));
    }
    if let (true, Some(token)) = (req.authorize, cx.token) {
        let _ = core::fmt::write(&mut auth, format_args!("Bearer {}", token));
        let _ = headers.push(("Authorization", auth.as_str()));
    }
    let request = Request::get(url.path())
        .host(url.host())
        .headers(&headers)
        .build();

    let mut http = HttpConnection::Plain(conn);
    let response = match serviced(
        with_timeout(STALL, http.send(request, head_buf)),
        &mut deadline,
        on_event,
    )
    .await
    {
        None => return Ok(()),
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(map_reqwless(e)),
        Some(Err(_)) => return Err(TransportError::Timeout),
    };

    let mut head = ResponseHead::new(response.status.0);
    for (name, value) in response.headers() {
        // A header that is not UTF-8 cannot be one the core reads.
        if let Ok(value) = core::str::from_utf8(value) {
            head.header(name, value);
        }
    }
    match on_event(Event::Head(&head)) {
        Flow::Abort => return Ok(()),
        Flow::Continue(d) => deadline = d,
    }

    let mut body = response.body().reader();
    loop {
        let n = match serviced(
            with_timeout(STALL, body.read(chunk)),
            &mut deadline,
            on_event,
        )
        .await
        {
            None => return Ok(()),
            Some(Ok(r)) => r.map_err(map_reqwless)?,
            Some(Err(_)) => return Err(TransportError::Timeout),
        };
        let flow = if n == 0 {
            on_event(Event::End)
        } else {
            on_event(Event::Body(&chunk[..n]))
        };
        match flow {
            Flow::Abort => return Ok(()),
            Flow::Continue(_) if n == 0 => return Ok(()),
            Flow::Continue(d) => deadline = d,
        }
    }
}

/// The core's clock is embassy's clock (ms since boot).
pub fn to_embassy(at: Instant) -> EmbassyInstant {
    EmbassyInstant::from_millis(at.0)
}

fn map_reqwless(e: reqwless::Error) -> TransportError {
    match e {
        reqwless::Error::Dns => TransportError::Dns,
        reqwless::Error::Network(ErrorKind::TimedOut) => TransportError::Timeout,
        // Connection drops, truncated bodies and unparsable responses all mean
        // "this exchange broke mid-way": the core retries or resumes.
        _ => TransportError::Reset,
    }
}

/// A connection, plain or TLS, as one `Read + Write` for reqwless.
enum Conn<'t, 's, 'b> {
    Plain(&'s mut TcpSocket<'b>),
    Tls(Session<'t, &'s mut TcpSocket<'b>>),
}

impl ErrorType for Conn<'_, '_, '_> {
    type Error = ErrorKind;
}

impl Read for Conn<'_, '_, '_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        use embedded_io_async::Error as _;
        match self {
            Conn::Plain(s) => s.read(buf).await.map_err(|e| e.kind()),
            Conn::Tls(s) => s.read(buf).await.map_err(|e| e.kind()),
        }
    }
}

impl Write for Conn<'_, '_, '_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        use embedded_io_async::Error as _;
        match self {
            Conn::Plain(s) => s.write(buf).await.map_err(|e| e.kind()),
            Conn::Tls(s) => s.write(buf).await.map_err(|e| e.kind()),
        }
    }

    async fn flush(&mut self) -> Result<(), ErrorKind> {
        use embedded_io_async::Error as _;
        match self {
            Conn::Plain(s) => s.flush().await.map_err(|e| e.kind()),
            Conn::Tls(s) => s.flush().await.map_err(|e| e.kind()),
        }
    }
}
