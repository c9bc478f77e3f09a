//! Fault knobs of the mock GitHub, switchable at run time through [`super::GithubHandle`].
//!
//! A fault is armed either for good or for a number of firings ([`Armed::times`]); every firing is
//! counted per [`FaultKind`] so a test asserts the fault really happened, not just that it was set.
//! Transport faults below HTTP (resets, refused connections) live in [`crate::proxy`].

use std::time::Duration;

/// Which requests a [`Fault::ServerError`] hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The JSON API under `/repos/…` (release lookups, asset metadata).
    Api,
    /// Asset downloads: `browser_download_url`, the API asset redirect and the CDN.
    Download,
    /// Every route.
    Any,
}

/// One misbehaviour of the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The repository has no release: `latest` answers 404, the list is empty.
    NoRelease,
    /// Answer with this HTTP status (GitHub-style JSON message) instead of serving the request.
    ServerError {
        /// e.g. 500, 502, 503.
        status: u16,
        /// Which requests fail.
        on: Route,
    },
    /// Release JSON bodies are cut in half (Content-Length matches the cut): valid HTTP, bad JSON.
    TruncatedJson,
    /// Asset body: headers announce the full Content-Length, the connection closes after `bytes`.
    CutBodyAfter {
        /// Body bytes sent (counted from the start of this response) before the close.
        bytes: u64,
    },
    /// Asset body: after `after` bytes, send nothing for `pause`, then continue.
    Stall {
        /// Body bytes sent before the pause.
        after: u64,
        /// How long the server stays silent (real time: sockets do not run on the virtual clock).
        pause: Duration,
    },
    /// Asset body sent in `chunk`-byte pieces with `delay` between them.
    Trickle {
        /// Bytes per write.
        chunk: usize,
        /// Sleep between writes.
        delay: Duration,
    },
    /// `browser_download_url` answers 302 to itself, forever.
    RedirectLoop,
    /// Every asset's `size` field is off by `delta` bytes (the served bytes are right).
    WrongSize {
        /// Added to the true size (negative to under-announce).
        delta: i64,
    },
    /// Every asset's `digest` field is a well-formed SHA-256 of other bytes.
    WrongHash,
    /// GitHub's secondary rate limit: 429 with `retry-after`, whatever the primary counter says.
    SecondaryRateLimit {
        /// Seconds announced in `retry-after`.
        retry_after: u64,
    },
}

/// A fault's name without its parameters, the key of the firing counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// [`Fault::NoRelease`].
    NoRelease,
    /// [`Fault::ServerError`].
    ServerError,
    /// [`Fault::TruncatedJson`].
    TruncatedJson,
    /// [`Fault::CutBodyAfter`].
    CutBodyAfter,
    /// [`Fault::Stall`].
    Stall,
    /// [`Fault::Trickle`].
    Trickle,
    /// [`Fault::RedirectLoop`].
    RedirectLoop,
    /// [`Fault::WrongSize`].
    WrongSize,
    /// [`Fault::WrongHash`].
    WrongHash,
    /// [`Fault::SecondaryRateLimit`].
    SecondaryRateLimit,
    /// The primary rate limit was exhausted (not a knob: see [`super::RateLimit`]).
    RateLimited,
}

impl Fault {
    /// The counter this fault increments when it fires.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::NoRelease => FaultKind::NoRelease,
            Fault::ServerError { .. } => FaultKind::ServerError,
            Fault::TruncatedJson => FaultKind::TruncatedJson,
            Fault::CutBodyAfter { .. } => FaultKind::CutBodyAfter,
            Fault::Stall { .. } => FaultKind::Stall,
            Fault::Trickle { .. } => FaultKind::Trickle,
            Fault::RedirectLoop => FaultKind::RedirectLoop,
            Fault::WrongSize { .. } => FaultKind::WrongSize,
            Fault::WrongHash => FaultKind::WrongHash,
            Fault::SecondaryRateLimit { .. } => FaultKind::SecondaryRateLimit,
        }
    }

    /// Armed for `n` firings, then disarmed ("fail N times then recover").
    pub fn times(self, n: u32) -> Armed {
        Armed {
            fault: self,
            remaining: Some(n),
        }
    }

    /// Armed until cleared.
    pub fn always(self) -> Armed {
        Armed {
            fault: self,
            remaining: None,
        }
    }
}

/// A fault plus how many more times it fires (`None` = until cleared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Armed {
    /// The misbehaviour.
    pub fault: Fault,
    /// Firings left; `None` never runs out.
    pub remaining: Option<u32>,
}

impl From<Fault> for Armed {
    fn from(fault: Fault) -> Self {
        fault.always()
    }
}

/// The armed faults; the server asks it at each decision point.
#[derive(Debug, Default)]
pub(crate) struct FaultSet {
    armed: Vec<Armed>,
    fired: std::collections::BTreeMap<FaultKind, u64>,
}

impl FaultSet {
    pub fn set(&mut self, faults: Vec<Armed>) {
        self.armed = faults;
    }

    pub fn push(&mut self, fault: Armed) {
        self.armed.push(fault);
    }

    pub fn fired(&self, kind: FaultKind) -> u64 {
        self.fired.get(&kind).copied().unwrap_or(0)
    }

    pub fn count(&mut self, kind: FaultKind) {
        *self.fired.entry(kind).or_insert(0) += 1;
    }

    /// Fires the first armed fault `pick` accepts: counts it, uses up one firing, returns a copy.
    pub fn take(&mut self, pick: impl Fn(&Fault) -> bool) -> Option<Fault> {
        // `times(0)` is armed but spent: it never fires.
        let i = self
            .armed
            .iter()
            .position(|a| a.remaining != Some(0) && pick(&a.fault))?;
        let fault = self.armed[i].fault.clone();
        if let Some(n) = &mut self.armed[i].remaining {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.armed.remove(i);
            }
        }
        self.count(fault.kind());
        Some(fault)
    }
}
