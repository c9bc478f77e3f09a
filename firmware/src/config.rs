//! `conf.json`: the board's configuration.
//!
//! It lives in its own partition (labelled `config`, data/undefined) that updates
//! never touch, so it survives every update. The schema:
//!
//! ```json
//! {
//!   "wifi":   { "ssid": "workshop", "password": "secret",
//!               "auth": "wpa2" },                        // optional: wpa2, wpa3, wpa2/wpa3, open
//!   "github": { "repository": "acme/thermostat",         // or https://github.com/acme/thermostat
//!               "api_base": "https://api.github.com",    // optional; GitHub Enterprise or the simulator
//!               "asset": "firmware-esp32c3.bin",         // the release asset to install
//!               "token": "github_pat_…" },               // optional
//!   "mqtt":   { "host": "broker.local", "port": 1883, "user": "u", "password": "p",
//!               "client_id": "thermostat-01", "topic_prefix": "ota" },
//!   "leds":   { "yellow": 4, "green": 5, "app": 8 },     // optional, GPIO numbers
//!   "update": { "allow_prereleases": false, "allow_downgrade": false,   // optional
//!               "max_wait_s": 120 }  // optional: the application starts after this long at most
//! }
//! ```
//!
//! Unknown fields are errors: a typo such as `"pasword"` would otherwise be
//! silently ignored on a board nobody can reach; so is a field or section given
//! twice, and two LEDs on one GPIO. Every error names the field. A UTF-8
//! byte-order mark (as Windows editors save files) is skipped; syntax error
//! offsets count from after it, as an editor shows the text.
//!
//! A file in the original MicroPython updater's flat format (`{"ssid": …,
//! "password": …, "repositorio": …}`) is recognised and refused with a pointer to
//! the README section that maps its fields ([`README_MICROPYTHON_SECTION`]).

use crate::json::{JsonError, JsonErrorKind, Path, Token, Tokenizer};
use core::fmt;
use heapless::String;

/// GPIO of the yellow LED when `leds.yellow` is not given (also used when conf.json is unreadable).
pub const DEFAULT_LED_YELLOW: u8 = 4;
/// GPIO of the green LED when `leds.green` is not given.
pub const DEFAULT_LED_GREEN: u8 = 5;
/// GPIO the example application blinks when `leds.app` is not given.
pub const DEFAULT_LED_APP: u8 = 8;

/// Largest `conf.json` read (the size of one flash sector).
pub const MAX_CONFIG_LEN: usize = 4096;
/// Value buffer of the config tokenizer: the longest string field.
const VALUE_BUF: usize = 160;

/// The UTF-8 byte-order mark some editors put at the start of a file.
const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// The README section that maps the MicroPython updater's `conf.json` to this one.
pub const README_MICROPYTHON_SECTION: &str = "conf.json from the MicroPython updater";

/// Top-level keys of a flat, MicroPython-updater style `conf.json` (English and Portuguese
/// spellings): one of them where a section should be means the file is in that format.
const FLAT_FORMAT_KEYS: [&str; 34] = [
    "ssid",
    "password",
    "senha",
    "wifi_ssid",
    "wifi_password",
    "wifi_senha",
    "rede",
    "repo",
    "repository",
    "repositorio",
    "github_repo",
    "github_repository",
    "url",
    "github_url",
    "token",
    "github_token",
    "asset",
    "arquivo",
    "firmware",
    "broker",
    "mqtt_broker",
    "mqtt_host",
    "mqtt_server",
    "mqtt_port",
    "porta",
    "mqtt_user",
    "mqtt_password",
    "client_id",
    "topic",
    "topico",
    "led_amarelo",
    "led_verde",
    "yellow_led",
    "green_led",
];

/// The parsed configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// WiFi network name.
    pub wifi_ssid: String<32>,
    /// WiFi passphrase; empty for an open network.
    pub wifi_password: String<64>,
    /// Repository owner (`acme` in `acme/thermostat`).
    pub owner: String<39>,
    /// Repository name.
    pub repo: String<100>,
    /// API base URL without a trailing slash.
    pub api_base: String<128>,
    /// Name of the release asset holding the firmware image.
    pub asset: String<128>,
    /// GitHub token, sent to the API host only.
    pub token: Option<String<128>>,
    /// MQTT broker host name or address.
    pub mqtt_host: String<128>,
    /// MQTT broker port.
    pub mqtt_port: u16,
    /// MQTT user name, if the broker wants one.
    pub mqtt_user: Option<String<64>>,
    /// MQTT password.
    pub mqtt_password: Option<String<128>>,
    /// MQTT client id; also names the board in the activity log.
    pub mqtt_client_id: String<64>,
    /// Topic prefix: the log goes to `{prefix}/{client_id}/log`.
    pub mqtt_topic_prefix: String<64>,
    /// GPIO of the yellow (busy) LED.
    pub led_yellow: u8,
    /// GPIO of the green (result) LED.
    pub led_green: u8,
    /// GPIO the example application blinks.
    pub led_app: u8,
    /// Install prereleases too.
    pub allow_prereleases: bool,
    /// Install a release older than the running version.
    pub allow_downgrade: bool,
    /// Longest the application waits for the update routine, in seconds (`update.max_wait_s`,
    /// default [`DEFAULT_MAX_WAIT_S`]); 0 waits for ever, as the original MicroPython updater did.
    pub max_wait_s: u32,
    /// How the board authenticates to the access point (`wifi.auth`).
    pub wifi_auth: WifiAuth,
}

/// Default of `update.max_wait_s`: two minutes of retrying before the application starts anyway.
pub const DEFAULT_MAX_WAIT_S: u32 = 120;

/// The WiFi security the board offers the access point (`wifi.auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WifiAuth {
    /// `"wpa2"`: WPA2-Personal (PSK); the default, and what an empty password means "open".
    #[default]
    Wpa2,
    /// `"wpa3"`: WPA3-Personal (SAE) only.
    Wpa3,
    /// `"wpa2/wpa3"`: a transition-mode access point, either.
    Wpa2Wpa3,
    /// `"open"`: no password.
    Open,
}

/// The field an error is about, as a dotted path (`mqtt.port`).
pub type FieldPath = String<48>;

/// What is wrong with a field or with the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The file is empty (or the config partition was never written).
    EmptyFile,
    /// The file is larger than [`MAX_CONFIG_LEN`].
    FileTooLarge,
    /// The file is not JSON (truncated, stray bytes …).
    Syntax(JsonError),
    /// The top level is not an object.
    NotAnObject,
    /// A required field is absent.
    Missing,
    /// A field has the wrong JSON type.
    WrongType {
        /// The type it should have.
        expected: &'static str,
    },
    /// A string is longer than the board can hold.
    TooLong {
        /// The longest accepted, in bytes.
        max: usize,
    },
    /// A field that `conf.json` does not have (a typo?).
    UnknownField,
    /// A number outside its range.
    OutOfRange,
    /// A string with an unaccepted value.
    Invalid(&'static str),
    /// A field or section given a second time (JSON parsers disagree on which one wins).
    Duplicate,
    /// Two LEDs on one GPIO pin; `other` may have it by default.
    SharedGpio {
        /// The GPIO number both use.
        gpio: u8,
        /// The other LED's field (`leds.yellow`).
        other: &'static str,
        /// True when the other LED has this GPIO only because it was not set.
        other_is_default: bool,
    },
    /// The file is in the original MicroPython updater's flat format (`field` is the first
    /// of its keys found).
    MicroPythonFormat,
}

/// A configuration error: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field (empty for whole-file problems).
    pub field: FieldPath,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "conf.json field `{}`: ", self.field)?;
        } else {
            f.write_str("conf.json: ")?;
        }
        match self.problem {
            Problem::EmptyFile => f.write_str("file is empty"),
            Problem::FileTooLarge => write!(f, "file is larger than {MAX_CONFIG_LEN} bytes"),
            Problem::Syntax(e) => write!(f, "not valid JSON: {e}"),
            Problem::NotAnObject => f.write_str("top level must be an object"),
            Problem::Missing => f.write_str("is required"),
            Problem::WrongType { expected } => write!(f, "must be {expected}"),
            Problem::TooLong { max } => write!(f, "longer than {max} bytes"),
            Problem::UnknownField => f.write_str("unknown field"),
            Problem::OutOfRange => f.write_str("out of range"),
            Problem::Invalid(why) => f.write_str(why),
            Problem::Duplicate => f.write_str("appears twice"),
            Problem::SharedGpio {
                gpio,
                other,
                other_is_default,
            } => {
                let default = if other_is_default { " by default" } else { "" };
                write!(
                    f,
                    "GPIO {gpio} is already `{other}`'s{default}; two LEDs cannot share a pin"
                )
            }
            Problem::MicroPythonFormat => write!(
                f,
                "this is the MicroPython updater's flat conf.json; this updater wants sections \
                 (wifi, github, mqtt, leds, update): see the README section \"{README_MICROPYTHON_SECTION}\""
            ),
        }
    }
}

impl From<JsonError> for ConfigError {
    fn from(e: JsonError) -> Self {
        ConfigError {
            field: FieldPath::new(),
            problem: Problem::Syntax(e),
        }
    }
}

fn field_error(path: &Path<'_>, problem: Problem) -> ConfigError {
    let mut field = FieldPath::new();
    // A path longer than the field buffer is cut; the start still names the section.
    let _ = fmt::write(&mut OneLine(&mut field), format_args!("{path}"));
    ConfigError { field, problem }
}

/// Writes text with control characters (a key may hold an escaped `\n`) as `?`, so that an
/// error naming the field stays one line on the console and in the log.
struct OneLine<'a>(&'a mut FieldPath);

impl fmt::Write for OneLine<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let c = if c.is_control() { '?' } else { c };
            self.0.push(c).map_err(|_| fmt::Error)?;
        }
        Ok(())
    }
}

fn named_error(name: &str, problem: Problem) -> ConfigError {
    let mut field = FieldPath::new();
    let _ = field.push_str(name);
    ConfigError { field, problem }
}

/// Parses `conf.json` as it streams in (from flash or from a file).
pub struct ConfigParser {
    tokenizer: Tokenizer<VALUE_BUF>,
    draft: Draft,
    len: usize,
    /// Bytes of a leading byte-order mark matched so far; `None` once past the start.
    bom_matched: Option<usize>,
}

/// Fields as they are found; required ones are checked at the end.
#[derive(Default)]
struct Draft {
    wifi_ssid: Option<String<32>>,
    wifi_password: Option<String<64>>,
    repository: Option<(String<39>, String<100>)>,
    api_base: Option<String<128>>,
    asset: Option<String<128>>,
    token: Option<String<128>>,
    mqtt_host: Option<String<128>>,
    mqtt_port: Option<u16>,
    mqtt_user: Option<String<64>>,
    mqtt_password: Option<String<128>>,
    mqtt_client_id: Option<String<64>>,
    mqtt_topic_prefix: Option<String<64>>,
    led_yellow: Option<u8>,
    led_green: Option<u8>,
    led_app: Option<u8>,
    allow_prereleases: Option<bool>,
    allow_downgrade: Option<bool>,
    max_wait_s: Option<u32>,
    wifi_auth: Option<WifiAuth>,
    /// Bit `i` is set once `FIELDS[i]` was given.
    fields_seen: u32,
    /// Bit `i` is set once `SECTIONS[i]` was opened.
    sections_seen: u8,
}

/// Every field, by section; the index is the field's bit in `Draft::fields_seen`.
const FIELDS: [[&str; 2]; 19] = [
    ["wifi", "ssid"],
    ["wifi", "password"],
    ["wifi", "auth"],
    ["github", "repository"],
    ["github", "api_base"],
    ["github", "asset"],
    ["github", "token"],
    ["mqtt", "host"],
    ["mqtt", "port"],
    ["mqtt", "user"],
    ["mqtt", "password"],
    ["mqtt", "client_id"],
    ["mqtt", "topic_prefix"],
    ["leds", "yellow"],
    ["leds", "green"],
    ["leds", "app"],
    ["update", "allow_prereleases"],
    ["update", "allow_downgrade"],
    ["update", "max_wait_s"],
];

const SECTIONS: [&str; 5] = ["wifi", "github", "mqtt", "leds", "update"];

impl Default for ConfigParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigParser {
    /// A parser at the start of the file.
    pub fn new() -> Self {
        ConfigParser {
            tokenizer: Tokenizer::new(),
            draft: Draft::default(),
            len: 0,
            bom_matched: Some(0),
        }
    }

    /// Feeds the next piece of the file.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<(), ConfigError> {
        self.len += chunk.len();
        if self.len > MAX_CONFIG_LEN {
            return Err(named_error("", Problem::FileTooLarge));
        }
        // A byte-order mark may arrive split over chunks: hold its bytes until it is whole,
        // and hand them to the tokenizer (which refuses them) if it turns out not to be one.
        while let (Some(matched), Some(&byte)) = (self.bom_matched, chunk.first()) {
            if byte == UTF8_BOM[matched] {
                chunk = &chunk[1..];
                self.bom_matched = (matched + 1 < UTF8_BOM.len()).then_some(matched + 1);
            } else {
                self.bom_matched = None;
                self.feed(&UTF8_BOM[..matched])?;
            }
        }
        self.feed(chunk)
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), ConfigError> {
        let draft = &mut self.draft;
        let result = self
            .tokenizer
            .push(bytes, &mut |path: &Path<'_>, token: Token<'_>| {
                draft.accept(path, token)
            });
        result.map_err(|e| self.name_syntax_error(e))
    }

    /// A control character inside a string is a syntax error that belongs to a field: name it.
    fn name_syntax_error(&self, e: ConfigError) -> ConfigError {
        match e.problem {
            Problem::Syntax(JsonError {
                kind: JsonErrorKind::ControlCharacter(_),
                ..
            }) if e.field.is_empty() => field_error(&self.tokenizer.value_path(), e.problem),
            _ => e,
        }
    }

    /// Ends the file and checks that every required field was given.
    pub fn finish(mut self) -> Result<Config, ConfigError> {
        if self.len == 0 {
            return Err(named_error("", Problem::EmptyFile));
        }
        if let Some(matched) = self.bom_matched.take() {
            self.feed(&UTF8_BOM[..matched])?;
        }
        let draft = &mut self.draft;
        self.tokenizer
            .finish(&mut |path: &Path<'_>, token: Token<'_>| draft.accept(path, token))?;
        self.draft.build()
    }
}

impl Config {
    /// Parses a whole `conf.json`.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let mut parser = ConfigParser::new();
        parser.push(bytes)?;
        parser.finish()
    }

    /// The topic the activity log is published to: `{prefix}/{client_id}/log`.
    pub fn log_topic(&self) -> String<160> {
        let mut topic = String::new();
        // 64 + 1 + 64 + 4 bytes fit in 160.
        let _ = fmt::write(
            &mut topic,
            format_args!("{}/{}/log", self.mqtt_topic_prefix, self.mqtt_client_id),
        );
        topic
    }
}

fn text<const M: usize>(path: &Path<'_>, token: Token<'_>) -> Result<String<M>, ConfigError> {
    match token {
        Token::Str(t) if t.truncated || t.value.len() > M => {
            Err(field_error(path, Problem::TooLong { max: M }))
        }
        Token::Str(t) => {
            let mut s = String::new();
            // Length checked just above.
            let _ = s.push_str(t.value);
            Ok(s)
        }
        _ => Err(field_error(
            path,
            Problem::WrongType {
                expected: "a string",
            },
        )),
    }
}

fn nonempty_text<const M: usize>(
    path: &Path<'_>,
    token: Token<'_>,
) -> Result<String<M>, ConfigError> {
    let s = text::<M>(path, token)?;
    if s.is_empty() {
        return Err(field_error(path, Problem::Invalid("must not be empty")));
    }
    Ok(s)
}

fn boolean(path: &Path<'_>, token: Token<'_>) -> Result<bool, ConfigError> {
    match token {
        Token::Bool(b) => Ok(b),
        _ => Err(field_error(
            path,
            Problem::WrongType {
                expected: "true or false",
            },
        )),
    }
}

fn integer(path: &Path<'_>, token: Token<'_>, min: u32, max: u32) -> Result<u32, ConfigError> {
    match token {
        Token::Number(n) => match n.parse::<u32>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            Ok(_) => Err(field_error(path, Problem::OutOfRange)),
            Err(_) if n.bytes().all(|b| b.is_ascii_digit()) => {
                Err(field_error(path, Problem::OutOfRange))
            }
            Err(_) => Err(field_error(
                path,
                Problem::WrongType {
                    expected: "a whole number",
                },
            )),
        },
        _ => Err(field_error(
            path,
            Problem::WrongType {
                expected: "a whole number",
            },
        )),
    }
}

impl Draft {
    fn accept(&mut self, path: &Path<'_>, token: Token<'_>) -> Result<(), ConfigError> {
        use crate::json::Segment;
        match path.len() {
            0 => match token {
                Token::StartObject | Token::EndObject => Ok(()),
                _ => Err(named_error("", Problem::NotAnObject)),
            },
            1 => {
                let key = match path.segment(0) {
                    Some(Segment::Key(k)) => k,
                    _ => "",
                };
                let Some(section) = SECTIONS.iter().position(|s| *s == key) else {
                    let flat = FLAT_FORMAT_KEYS.contains(&key)
                        && !matches!(token, Token::StartObject | Token::StartArray);
                    let problem = if flat {
                        Problem::MicroPythonFormat
                    } else {
                        Problem::UnknownField
                    };
                    return Err(field_error(path, problem));
                };
                match token {
                    Token::StartObject => {
                        let bit = 1u8 << section;
                        if self.sections_seen & bit != 0 {
                            return Err(field_error(path, Problem::Duplicate));
                        }
                        self.sections_seen |= bit;
                        Ok(())
                    }
                    Token::EndObject => Ok(()),
                    // Nested arrays and scalars at section level are type errors.
                    _ => Err(field_error(
                        path,
                        Problem::WrongType {
                            expected: "an object",
                        },
                    )),
                }
            }
            2 => self.field(path, token),
            // Deeper values only occur inside a wrongly typed field.
            _ => {
                let mut outer = FieldPath::new();
                if let (Some(Segment::Key(a)), Some(Segment::Key(b))) =
                    (path.segment(0), path.segment(1))
                {
                    let _ = fmt::write(&mut OneLine(&mut outer), format_args!("{a}.{b}"));
                }
                Err(ConfigError {
                    field: outer,
                    problem: Problem::WrongType {
                        expected: "a scalar value",
                    },
                })
            }
        }
    }

    fn field(&mut self, path: &Path<'_>, token: Token<'_>) -> Result<(), ConfigError> {
        if matches!(token, Token::StartObject | Token::StartArray) {
            // Report the container itself; its contents would only repeat the error.
            let expected = if path.is(&["update", "allow_prereleases"])
                || path.is(&["update", "allow_downgrade"])
            {
                "true or false"
            } else {
                "a scalar value"
            };
            if !self.knows(path) {
                return Err(field_error(path, Problem::UnknownField));
            }
            return Err(field_error(path, Problem::WrongType { expected }));
        }
        if matches!(token, Token::EndObject | Token::EndArray) {
            return Ok(());
        }
        if let Some(index) = FIELDS.iter().position(|f| path.is(f)) {
            let bit = 1u32 << index;
            if self.fields_seen & bit != 0 {
                return Err(field_error(path, Problem::Duplicate));
            }
            self.fields_seen |= bit;
        }
        match () {
            _ if path.is(&["wifi", "ssid"]) => self.wifi_ssid = Some(nonempty_text(path, token)?),
            _ if path.is(&["wifi", "password"]) => self.wifi_password = Some(text(path, token)?),
            _ if path.is(&["wifi", "auth"]) => {
                let value: String<16> = text(path, token)?;
                self.wifi_auth = Some(match value.as_str() {
                    "wpa2" => WifiAuth::Wpa2,
                    "wpa3" => WifiAuth::Wpa3,
                    "wpa2/wpa3" => WifiAuth::Wpa2Wpa3,
                    "open" => WifiAuth::Open,
                    _ => {
                        return Err(field_error(
                            path,
                            Problem::Invalid(
                                "must be \"wpa2\", \"wpa3\", \"wpa2/wpa3\" or \"open\"",
                            ),
                        ));
                    }
                });
            }
            _ if path.is(&["github", "repository"]) => {
                let value = text::<160>(path, token)?;
                let parsed = parse_repository(&value)
                    .map_err(|why| field_error(path, Problem::Invalid(why)))?;
                self.repository = Some(parsed);
            }
            _ if path.is(&["github", "api_base"]) => {
                let base: String<128> = nonempty_text(path, token)?;
                if !(base.starts_with("https://") || base.starts_with("http://")) {
                    return Err(field_error(
                        path,
                        Problem::Invalid("must start with https:// or http://"),
                    ));
                }
                let mut trimmed = String::new();
                let _ = trimmed.push_str(base.trim_end_matches('/'));
                self.api_base = Some(trimmed);
            }
            _ if path.is(&["github", "asset"]) => self.asset = Some(nonempty_text(path, token)?),
            _ if path.is(&["github", "token"]) => {
                self.token = match token {
                    Token::Null => None,
                    _ => Some(text(path, token)?).filter(|t: &String<128>| !t.is_empty()),
                }
            }
            _ if path.is(&["mqtt", "host"]) => self.mqtt_host = Some(nonempty_text(path, token)?),
            _ if path.is(&["mqtt", "port"]) => {
                self.mqtt_port = Some(integer(path, token, 1, 65535)? as u16)
            }
            _ if path.is(&["mqtt", "user"]) => self.mqtt_user = Some(text(path, token)?),
            _ if path.is(&["mqtt", "password"]) => self.mqtt_password = Some(text(path, token)?),
            _ if path.is(&["mqtt", "client_id"]) => {
                let id: String<64> = nonempty_text(path, token)?;
                // It is a topic level of the log topic.
                if id.contains(['#', '+', '/']) {
                    return Err(field_error(
                        path,
                        Problem::Invalid("must not contain #, + or /"),
                    ));
                }
                self.mqtt_client_id = Some(id);
            }
            _ if path.is(&["mqtt", "topic_prefix"]) => {
                let prefix: String<64> = nonempty_text(path, token)?;
                if prefix.contains(['#', '+']) {
                    return Err(field_error(
                        path,
                        Problem::Invalid("must not contain MQTT wildcards # or +"),
                    ));
                }
                self.mqtt_topic_prefix = Some(prefix);
            }
            _ if path.is(&["leds", "yellow"]) => {
                self.led_yellow = Some(integer(path, token, 0, 48)? as u8)
            }
            _ if path.is(&["leds", "green"]) => {
                self.led_green = Some(integer(path, token, 0, 48)? as u8)
            }
            _ if path.is(&["leds", "app"]) => {
                self.led_app = Some(integer(path, token, 0, 48)? as u8)
            }
            _ if path.is(&["update", "allow_prereleases"]) => {
                self.allow_prereleases = Some(boolean(path, token)?)
            }
            _ if path.is(&["update", "allow_downgrade"]) => {
                self.allow_downgrade = Some(boolean(path, token)?)
            }
            // A day at most: longer is a typo (milliseconds?), and 0 already means for ever.
            _ if path.is(&["update", "max_wait_s"]) => {
                self.max_wait_s = Some(integer(path, token, 0, 86_400)?)
            }
            _ => return Err(field_error(path, Problem::UnknownField)),
        }
        Ok(())
    }

    fn knows(&self, path: &Path<'_>) -> bool {
        FIELDS.iter().any(|f| path.is(f))
    }

    /// Two LEDs on one pin: the later of two given fields is named, or the given one
    /// when the other has the pin by default.
    fn check_led_pins(&self) -> Result<(u8, u8, u8), ConfigError> {
        let leds = [
            ("leds.yellow", self.led_yellow, DEFAULT_LED_YELLOW),
            ("leds.green", self.led_green, DEFAULT_LED_GREEN),
            ("leds.app", self.led_app, DEFAULT_LED_APP),
        ];
        let pin = |i: usize| leds[i].1.unwrap_or(leds[i].2);
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            if pin(a) != pin(b) {
                continue;
            }
            // Defaults differ, so at least one of the two was given.
            let (named, other) = if leds[b].1.is_some() { (b, a) } else { (a, b) };
            return Err(named_error(
                leds[named].0,
                Problem::SharedGpio {
                    gpio: pin(a),
                    other: leds[other].0,
                    other_is_default: leds[other].1.is_none(),
                },
            ));
        }
        Ok((pin(0), pin(1), pin(2)))
    }

    fn build(self) -> Result<Config, ConfigError> {
        let (led_yellow, led_green, led_app) = self.check_led_pins()?;
        let missing = |name: &str| named_error(name, Problem::Missing);
        let (owner, repo) = self
            .repository
            .ok_or_else(|| missing("github.repository"))?;
        let mut default_base = String::new();
        let _ = default_base.push_str("https://api.github.com");
        let api_base = self.api_base.unwrap_or(default_base);
        // A token crosses the network in clear over http://: refused, except to this machine
        // itself (the simulator's mock GitHub on loopback).
        if self.token.is_some()
            && api_base.starts_with("http://")
            && !crate::http::is_loopback(&api_base)
        {
            return Err(named_error(
                "github.token",
                Problem::Invalid("is only sent over https://, and github.api_base is http://"),
            ));
        }
        // No password is an open network unless the file says otherwise.
        let open = self.wifi_password.as_ref().is_none_or(|p| p.is_empty());
        let wifi_auth =
            self.wifi_auth
                .unwrap_or(if open { WifiAuth::Open } else { WifiAuth::Wpa2 });
        let mut default_prefix = String::new();
        let _ = default_prefix.push_str("ota");
        Ok(Config {
            wifi_ssid: self.wifi_ssid.ok_or_else(|| missing("wifi.ssid"))?,
            wifi_password: self.wifi_password.unwrap_or_default(),
            owner,
            repo,
            api_base,
            asset: self.asset.ok_or_else(|| missing("github.asset"))?,
            token: self.token,
            mqtt_host: self.mqtt_host.ok_or_else(|| missing("mqtt.host"))?,
            mqtt_port: self.mqtt_port.unwrap_or(1883),
            mqtt_user: self.mqtt_user.filter(|u| !u.is_empty()),
            mqtt_password: self.mqtt_password.filter(|p| !p.is_empty()),
            mqtt_client_id: self
                .mqtt_client_id
                .ok_or_else(|| missing("mqtt.client_id"))?,
            mqtt_topic_prefix: self.mqtt_topic_prefix.unwrap_or(default_prefix),
            led_yellow,
            led_green,
            led_app,
            allow_prereleases: self.allow_prereleases.unwrap_or(false),
            allow_downgrade: self.allow_downgrade.unwrap_or(false),
            max_wait_s: self.max_wait_s.unwrap_or(DEFAULT_MAX_WAIT_S),
            wifi_auth,
        })
    }
}

/// Accepts `owner/repo` and `https://github.com/owner/repo` (the original
/// project's form, optionally with `.git` or a trailing slash).
fn parse_repository(value: &str) -> Result<(String<39>, String<100>), &'static str> {
    const FORMS: &str = "must be owner/repo or https://github.com/owner/repo";
    let rest = if let Some(link) = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
    {
        link.strip_prefix("github.com/")
            .or_else(|| link.strip_prefix("www.github.com/"))
            .ok_or(FORMS)?
    } else if value.contains(':') {
        return Err(FORMS);
    } else {
        value
    };
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    let mut parts = rest.split('/');
    let (Some(owner), Some(repo), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(FORMS);
    };
    let owner_ok = !owner.is_empty()
        && owner.len() <= 39
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !owner.starts_with('-');
    let repo_ok = !repo.is_empty()
        && repo.len() <= 100
        && repo != "."
        && repo != ".."
        && repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !owner_ok || !repo_ok {
        return Err("has characters GitHub does not allow in owner/repo");
    }
    let mut o = String::new();
    let mut r = String::new();
    // Lengths checked above.
    let _ = o.push_str(owner);
    let _ = r.push_str(repo);
    Ok((o, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    const GOOD: &str = r#"{
      "wifi": {"ssid": "workshop", "password": "hunter22"},
      "github": {"repository": "https://github.com/acme/thermostat", "asset": "fw.bin"},
      "mqtt": {"host": "10.0.0.2", "port": 1884, "client_id": "board-7"}
    }"#;

    fn err(doc: &str) -> ConfigError {
        Config::parse(doc.as_bytes()).unwrap_err()
    }

    fn with(section: &str, field: &str, value: &str) -> std::string::String {
        GOOD.replacen(
            &std::format!("\"{section}\": {{"),
            &std::format!("\"{section}\": {{\"{field}\": {value}, "),
            1,
        )
    }

    #[test]
    fn wifi_auth_and_max_wait_parse_with_their_defaults() {
        let c = Config::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(
            c.wifi_auth,
            WifiAuth::Wpa2,
            "a password means WPA2 by default"
        );
        assert_eq!(c.max_wait_s, DEFAULT_MAX_WAIT_S);
        for (text, auth) in [
            ("\"wpa2\"", WifiAuth::Wpa2),
            ("\"wpa3\"", WifiAuth::Wpa3),
            ("\"wpa2/wpa3\"", WifiAuth::Wpa2Wpa3),
            ("\"open\"", WifiAuth::Open),
        ] {
            let c = Config::parse(with("wifi", "auth", text).as_bytes()).unwrap();
            assert_eq!(c.wifi_auth, auth, "{text}");
        }
        let open = GOOD.replace(", \"password\": \"hunter22\"", "");
        assert_eq!(
            Config::parse(open.as_bytes()).unwrap().wifi_auth,
            WifiAuth::Open
        );
        let e = err(&with("wifi", "auth", "\"wep\""));
        assert_eq!(e.field, "wifi.auth");
        assert!(matches!(e.problem, Problem::Invalid(_)), "{e}");
        // After the wifi section's closing brace: an update section of its own.
        let forever = GOOD.replacen('}', "}, \"update\": {\"max_wait_s\": 0}", 1);
        let c = Config::parse(forever.as_bytes());
        assert!(c.is_ok_and(|c| c.max_wait_s == 0));
        // A container where a known field's value belongs is a type error, not an unknown field.
        let e = err(&with("wifi", "auth", "[\"wpa2\"]"));
        assert_eq!(e.field, "wifi.auth");
        assert!(matches!(e.problem, Problem::WrongType { .. }), "{e}");
        let e = err(&with("wifi", "authentication", "{}"));
        assert_eq!(e.problem, Problem::UnknownField);
    }

    #[test]
    fn a_minimal_file_parses_with_documented_defaults() {
        let c = Config::parse(GOOD.as_bytes()).unwrap();
        assert_eq!((c.owner.as_str(), c.repo.as_str()), ("acme", "thermostat"));
        assert_eq!(c.api_base, "https://api.github.com");
        assert_eq!(c.mqtt_port, 1884);
        assert_eq!(c.mqtt_topic_prefix, "ota");
        assert_eq!(c.log_topic(), "ota/board-7/log");
        assert_eq!((c.led_yellow, c.led_green, c.led_app), (4, 5, 8));
        assert!(!c.allow_prereleases && !c.allow_downgrade);
        assert_eq!(c.token, None);
    }

    #[test]
    fn the_example_conf_json_in_the_repository_parses() {
        let c = Config::parse(include_bytes!("../../conf.json")).unwrap();
        assert_eq!(c.repo, "thermostat");
    }

    #[test]
    fn both_repository_forms_are_accepted() {
        for form in [
            "acme/thermostat",
            "https://github.com/acme/thermostat",
            "https://github.com/acme/thermostat.git/",
            "http://www.github.com/acme/thermostat",
        ] {
            // GOOD already has a repository: replace it (a second one would be a duplicate).
            let doc = GOOD.replace("https://github.com/acme/thermostat", form);
            let c = Config::parse(doc.as_bytes()).unwrap();
            assert_eq!(
                (c.owner.as_str(), c.repo.as_str()),
                ("acme", "thermostat"),
                "{form}"
            );
        }
    }

    #[test]
    fn unknown_repository_forms_name_the_field() {
        for form in [
            "acme",
            "acme/thermostat/extra",
            "https://gitlab.com/acme/thermostat",
            "git@github.com:acme/thermostat",
            "https://github.com/acme",
            "ac me/thermostat",
            "",
        ] {
            let e = err(&with("github", "repository", &std::format!("\"{form}\"")));
            assert_eq!(e.field, "github.repository", "{form}: {e}");
            assert!(matches!(e.problem, Problem::Invalid(_)), "{form}: {e}");
        }
    }

    #[test]
    fn an_empty_file_is_reported_as_such() {
        assert_eq!(err("").problem, Problem::EmptyFile);
        assert_eq!(err("").to_string(), "conf.json: file is empty");
    }

    #[test]
    fn a_truncated_file_is_a_syntax_error_at_its_end() {
        let cut = &GOOD[..GOOD.len() / 2];
        let e = err(cut);
        assert!(
            matches!(
                e.problem,
                Problem::Syntax(JsonError {
                    kind: crate::json::JsonErrorKind::UnexpectedEnd,
                    ..
                })
            ),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = err(&with("mqtt", "port", "\"1883\""));
        assert_eq!(
            (e.field.as_str(), e.problem),
            (
                "mqtt.port",
                Problem::WrongType {
                    expected: "a whole number"
                }
            )
        );
        assert_eq!(
            e.to_string(),
            "conf.json field `mqtt.port`: must be a whole number"
        );
        let e = err(&with("wifi", "ssid", "42"));
        assert_eq!(e.field, "wifi.ssid");
        let e = err(&GOOD.replacen(
            "\"mqtt\": {",
            "\"update\": {\"allow_downgrade\": \"yes\"}, \"mqtt\": {",
            1,
        ));
        assert_eq!(
            (e.field.as_str(), e.problem),
            (
                "update.allow_downgrade",
                Problem::WrongType {
                    expected: "true or false"
                }
            )
        );
        let e = err(&with("mqtt", "host", "[\"a\"]"));
        assert_eq!(e.field, "mqtt.host");
        let e = err(r#"{"wifi": "workshop"}"#);
        assert_eq!(
            (e.field.as_str(), e.problem),
            (
                "wifi",
                Problem::WrongType {
                    expected: "an object"
                }
            )
        );
        assert_eq!(err("[1]").problem, Problem::NotAnObject);
    }

    #[test]
    fn missing_required_fields_are_named() {
        let e = err(&GOOD.replace(
            r#""asset": "fw.bin""#,
            r#""api_base": "http://127.0.0.1:8080/""#,
        ));
        assert_eq!(
            (e.field.as_str(), e.problem),
            ("github.asset", Problem::Missing)
        );
        let e = err(&GOOD.replace(r#""ssid": "workshop", "#, ""));
        assert_eq!(e.field, "wifi.ssid");
    }

    #[test]
    fn out_of_range_too_long_and_unknown_fields_are_named() {
        let e = err(&with("mqtt", "port", "70000"));
        assert_eq!(
            (e.field.as_str(), e.problem),
            ("mqtt.port", Problem::OutOfRange)
        );
        let e = err(&with("mqtt", "port", "-1"));
        assert_eq!(e.field, "mqtt.port");
        let e = err(&with(
            "wifi",
            "ssid",
            &std::format!("\"{}\"", "x".repeat(33)),
        ));
        assert_eq!(
            (e.field.as_str(), e.problem),
            ("wifi.ssid", Problem::TooLong { max: 32 })
        );
        let e = err(&with("wifi", "pasword", "\"x\""));
        assert_eq!(
            (e.field.as_str(), e.problem),
            ("wifi.pasword", Problem::UnknownField)
        );
        let e = err(&GOOD.replace("board-7", "board/7"));
        assert_eq!(e.field, "mqtt.client_id");
        let e = err(r#"{"wfi": {}}"#);
        assert_eq!(
            (e.field.as_str(), e.problem),
            ("wfi", Problem::UnknownField)
        );
        let e = err(&with("github", "api_base", "\"ftp://x\""));
        assert_eq!(e.field, "github.api_base");
    }

    #[test]
    fn a_file_larger_than_a_sector_is_refused() {
        let big = std::format!(
            "{{\"wifi\": {{\"ssid\": \"{}\"}}}}",
            " ".repeat(MAX_CONFIG_LEN)
        );
        assert_eq!(err(&big).problem, Problem::FileTooLarge);
    }

    #[test]
    fn a_token_is_never_configured_for_plain_http_beyond_loopback() {
        let conf = |base: &str| {
            with(
                "github",
                "api_base",
                &std::format!("\"{base}\", \"token\": \"ghp_secret\""),
            )
        };
        let e = err(&conf("http://ghe.example.com/api/v3"));
        assert_eq!(e.field, "github.token");
        assert!(std::format!("{e}").contains("https://"), "{e}");
        for base in [
            "https://ghe.example.com/api/v3",
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:80",
        ] {
            Config::parse(conf(base).as_bytes()).unwrap();
        }
        // Without a token, plain http is the user's choice.
        Config::parse(with("github", "api_base", "\"http://ghe.example.com\"").as_bytes()).unwrap();
    }

    fn parse_in_chunks(doc: &[u8], chunk: usize) -> Result<Config, ConfigError> {
        let mut parser = ConfigParser::new();
        for piece in doc.chunks(chunk) {
            parser.push(piece)?;
        }
        parser.finish()
    }

    #[test]
    fn a_utf8_byte_order_mark_is_skipped_however_the_file_arrives() {
        let with_bom = [&UTF8_BOM[..], GOOD.as_bytes()].concat();
        let plain = Config::parse(GOOD.as_bytes()).unwrap();
        for chunk in [1, 2, 3, 4, 7, with_bom.len()] {
            assert_eq!(
                parse_in_chunks(&with_bom, chunk).unwrap(),
                plain,
                "chunk {chunk}"
            );
        }
        // Offsets count from after the mark, as an editor shows the text.
        let e = err("\u{feff}{\"wifi\" 1}");
        assert_eq!(
            e.problem,
            Problem::Syntax(JsonError {
                kind: JsonErrorKind::UnexpectedByte(b'1'),
                offset: 8
            })
        );
        // Only a whole mark, only at the start.
        for doc in [
            &b"\xef\xbb{}"[..],
            b"\xef{}",
            b"\xef\xbb",
            b" \xef\xbb\xbf{}",
        ] {
            for chunk in [1, 2, doc.len()] {
                let e = parse_in_chunks(doc, chunk).unwrap_err();
                assert!(matches!(e.problem, Problem::Syntax(_)), "{doc:?}: {e}");
            }
        }
        let e = Config::parse(b"\xef\xbb{}").unwrap_err();
        assert_eq!(
            e.problem,
            Problem::Syntax(JsonError {
                kind: JsonErrorKind::UnexpectedByte(0xef),
                offset: 0
            })
        );
    }

    #[test]
    fn a_field_or_section_given_twice_is_named() {
        let e = err(&with("wifi", "ssid", "\"other\""));
        assert_eq!(
            (e.field.as_str(), e.problem),
            ("wifi.ssid", Problem::Duplicate)
        );
        assert_eq!(e.to_string(), "conf.json field `wifi.ssid`: appears twice");
        // Even when both say the same, and for a null token.
        let e = err(&with("mqtt", "port", "1884"));
        assert_eq!(e.field, "mqtt.port");
        let e = err(&with("github", "token", "null, \"token\": null"));
        assert_eq!(
            (e.field.as_str(), e.problem),
            ("github.token", Problem::Duplicate)
        );
        let e = err(&GOOD.replacen(
            "\"mqtt\": {",
            "\"leds\": {\"yellow\": 1}, \"leds\": {\"green\": 2}, \"mqtt\": {",
            1,
        ));
        assert_eq!((e.field.as_str(), e.problem), ("leds", Problem::Duplicate));
        assert_eq!(e.to_string(), "conf.json field `leds`: appears twice");
    }

    #[test]
    fn two_leds_on_one_gpio_are_refused_naming_both() {
        let leds = |json: &str| {
            GOOD.replacen(
                "\"mqtt\": {",
                &std::format!("\"leds\": {json}, \"mqtt\": {{"),
                1,
            )
        };
        let e = err(&leds(r#"{"yellow": 6, "green": 6}"#));
        assert_eq!(e.field, "leds.green");
        assert_eq!(
            e.problem,
            Problem::SharedGpio {
                gpio: 6,
                other: "leds.yellow",
                other_is_default: false
            }
        );
        assert_eq!(
            e.to_string(),
            "conf.json field `leds.green`: GPIO 6 is already `leds.yellow`'s; two LEDs cannot share a pin"
        );
        // Against a default: the given field is named, and the default said so.
        let e = err(&leds(r#"{"app": 4}"#));
        assert_eq!(e.field, "leds.app");
        assert_eq!(
            e.problem,
            Problem::SharedGpio {
                gpio: 4,
                other: "leds.yellow",
                other_is_default: true
            }
        );
        assert!(e.to_string().contains("`leds.yellow`'s by default"), "{e}");
        let e = err(&leds(r#"{"yellow": 5}"#));
        assert_eq!(e.field, "leds.yellow");
        assert_eq!(
            e.problem,
            Problem::SharedGpio {
                gpio: 5,
                other: "leds.green",
                other_is_default: true
            }
        );
        // Swapping pins is fine.
        let c = Config::parse(leds(r#"{"yellow": 5, "green": 4}"#).as_bytes()).unwrap();
        assert_eq!((c.led_yellow, c.led_green, c.led_app), (5, 4, 8));
    }

    #[test]
    fn a_control_character_in_a_string_names_the_field() {
        let e = err(&with("wifi", "password", "\"tab\there\""));
        assert_eq!(e.field, "wifi.password");
        assert!(
            matches!(
                e.problem,
                Problem::Syntax(JsonError {
                    kind: JsonErrorKind::ControlCharacter(b'\t'),
                    ..
                })
            ),
            "{e}"
        );
        assert!(
            e.to_string().starts_with(
                "conf.json field `wifi.password`: not valid JSON: control character 0x09"
            ),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
        // In a key: the section it is in.
        let e = err(&with("mqtt", "ho\u{1}st", "\"x\""));
        assert_eq!(e.field, "mqtt");
        // Found by the config_parser fuzz target: an escaped control character in an unknown
        // key made the error two lines.
        let e = err("{\"wi\\nfi\": {}}");
        assert_eq!(
            (e.field.as_str(), e.problem),
            ("wi?fi", Problem::UnknownField)
        );
        // Escaped, it is just a character.
        let c = Config::parse(GOOD.replace("hunter22", "tab\\there").as_bytes()).unwrap();
        assert_eq!(c.wifi_password, "tab\there");
    }

    #[test]
    fn the_micropython_updaters_flat_file_points_to_the_readme() {
        let flat = r#"{"ssid": "casa", "password": "segredo",
            "repositorio": "https://github.com/acme/thermostat", "broker": "10.0.0.2"}"#;
        let e = err(flat);
        assert_eq!(
            (e.field.as_str(), e.problem),
            ("ssid", Problem::MicroPythonFormat)
        );
        let line = e.to_string();
        assert!(line.contains("MicroPython updater"), "{line}");
        assert!(line.contains(README_MICROPYTHON_SECTION), "{line}");
        assert!(!line.contains('\n'));
        for key in ["repositorio", "broker", "wifi_ssid", "mqtt_broker", "repo"] {
            let e = err(&std::format!("{{\"{key}\": \"x\"}}"));
            assert_eq!(
                (e.field.as_str(), e.problem),
                (key, Problem::MicroPythonFormat),
                "{key}"
            );
        }
        // A section-shaped unknown key is a plain typo.
        assert_eq!(err(r#"{"broker": {}}"#).problem, Problem::UnknownField);
        assert_eq!(err(r#"{"wfi": "x"}"#).problem, Problem::UnknownField);
    }

    #[test]
    fn the_api_base_loses_its_trailing_slash() {
        let c = Config::parse(with("github", "api_base", "\"http://127.0.0.1:8080/\"").as_bytes())
            .unwrap();
        assert_eq!(c.api_base, "http://127.0.0.1:8080");
    }
}
