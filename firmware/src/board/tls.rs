//! TLS client sessions (mbedtls-rs, TLS 1.2 and 1.3) against the embedded roots.
//!
//! The trust anchors are the root CAs GitHub's API host and its release-asset
//! host chain to (see `certs/README.md`). Verification is `AuthMode::Required`:
//! chain, signature and host name (SNI + CN/SAN) are checked. The board has no
//! wall clock, so — as mbedtls-rs documents — the notBefore/notAfter window is
//! not checked (turning on its `hook-wall-clock` feature needs an on-the-fly C
//! build of mbedtls, which this project avoids).

use core::ffi::CStr;

use esp_hal::rng::Trng;
use mbedtls_rs::{Certificate, ClientSessionConfig, Session, SessionConfig, Tls, X509};
use static_cell::StaticCell;

/// The root bundle, PEM, NUL-terminated (mbedtls parses it in one call).
const ROOTS_PEM: &str = concat!(
    include_str!("certs/USERTrust_ECC_Certification_Authority.pem"),
    include_str!("certs/USERTrust_RSA_Certification_Authority.pem"),
    include_str!("certs/Sectigo_Public_Server_Authentication_Root_E46.pem"),
    include_str!("certs/Sectigo_Public_Server_Authentication_Root_R46.pem"),
    include_str!("certs/DigiCert_Global_Root_CA.pem"),
    include_str!("certs/DigiCert_Global_Root_G2.pem"),
    include_str!("certs/DigiCert_High_Assurance_EV_Root_CA.pem"),
    "\0"
);

/// The one mbedtls instance and the parsed roots, created on first use.
pub struct TlsContext {
    tls: Tls<'static>,
    roots: Certificate<'static>,
}

/// Why a TLS context could not be created.
#[derive(Debug)]
pub enum TlsSetupError {
    /// A second instance was requested.
    AlreadyCreated,
    /// The embedded PEM bundle did not parse (a build error, really).
    Roots,
}

impl TlsContext {
    /// Creates the context; `rng` feeds mbedtls' CTR-DRBG for the program's life.
    pub fn new(rng: Trng) -> Result<Self, TlsSetupError> {
        static RNG: StaticCell<Trng> = StaticCell::new();
        let tls = Tls::new(RNG.init(rng)).map_err(|_| TlsSetupError::AlreadyCreated)?;
        let pem =
            CStr::from_bytes_with_nul(ROOTS_PEM.as_bytes()).map_err(|_| TlsSetupError::Roots)?;
        let roots = Certificate::new(X509::PEM(pem)).map_err(|_| TlsSetupError::Roots)?;
        Ok(Self { tls, roots })
    }

    /// Opens a verified client session over `stream` for `server_name`
    /// (NUL-terminated host name: SNI and the name the certificate must carry).
    pub async fn connect<'a, S>(
        &'a self,
        stream: S,
        server_name: &'a CStr,
    ) -> Result<Session<'a, S>, mbedtls_rs::SessionError>
    where
        S: embedded_io_async::Read + embedded_io_async::Write,
    {
        let mut config = ClientSessionConfig::new();
        config.ca_chain = Some(self.roots.clone());
        config.server_name = Some(server_name);
        let mut session =
            Session::new(self.tls.reference(), stream, &SessionConfig::Client(config))?;
        session.connect().await?;
        Ok(session)
    }
}
