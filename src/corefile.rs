//! Reading a Corefile: the subset of CoreDNS's syntax idetcd needs, turned into a `Config`.
//!
//! ```text
//! tf.local:53 {                       # server block: ZONE[:PORT] ...
//!     bind 10.0.0.3                   # directives, one per line
//!     idetcd {                        # nested block
//!         endpoint http://10.0.0.5:2379
//!         pattern worker{{.ID}}.tf.local.
//!     }
//! }
//! .:53 {                              # more blocks, for other zones (see `servers`)
//!     forward . 10.0.0.2
//! }
//! ```
//!
//! Tokens are separated by white space; `#` at the start of a token comments out the rest of the
//! line; `"..."` quotes a token; `{` and `}` are braces only as tokens of their own, so
//! `worker{{.ID}}` is one word. `{$NAME}` and `{$NAME:default}` are replaced by environment
//! variables, as in CoreDNS; an unset one is an error where its directive is used (`Reader`).
//! Every error names the file and line.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::config::{self, Config, Follow};
use crate::pattern::Pattern;

#[derive(Debug, PartialEq, Eq)]
pub struct Error {
    pub source: PathBuf,
    /// 0 when the error is about the file as a whole.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.source.display(), self.message),
            line => write!(f, "{}:{}: {}", self.source.display(), line, self.message),
        }
    }
}

impl std::error::Error for Error {}

const SERVER_DIRECTIVES: &str = "bind, forward, log, errors, cache, reload, health, prometheus, ready, idetcd";
const IDETCD_DIRECTIVES: &str =
    "endpoint, autosync, tls, credentials, limit, start, pattern, role, address, ttl, nameservers, lease, poll, watch, threads";
/// Each role adds a range to the claim and read transactions, and etcd caps their operations.
const MAX_ROLES: usize = 32;

/// Who reads the Corefile, and so how much of it must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// The daemon: every directive of every server block is built and checked, and an unset
    /// `{$NAME}` anywhere is an error.
    Daemon,
    /// `members` and the launchers: only the idetcd block (etcd, roles, addresses) is built. The
    /// server blocks' own directives (`bind`, `forward`, `health`, ...) and keys are not, so that a
    /// variable only they use may be unset where these commands run; the `Config`'s server
    /// settings (listen, forward, monitors, port, log) keep their defaults.
    Client,
}

pub fn load(path: &Path, reader: Reader) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        // Where it was looked for, also when the path was relative.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let message = match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "no such file: looked for the Corefile in {}; name yours with `-conf PATH` (see `idetcd --help`)",
                absolute.parent().unwrap_or(Path::new("/")).display()
            ),
            _ => format!("cannot read the Corefile: {e}"),
        };
        Error { source: absolute, line: 0, message }
    })?;
    let mut config = parse_as(&text, path, &|name| std::env::var(name).ok(), reader)?;
    if config.credentials.is_some() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o004 != 0 {
            config.warnings.push(format!(
                "{} holds an etcd password and every user can read it; chmod 600 it (or 640 for a group)",
                path.display()
            ));
        }
    }
    Ok(config)
}

/// Parses Corefile text as the daemon reads it; `env` looks up `{$NAME}` placeholders.
pub fn parse(text: &str, source: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
    parse_as(text, source, env, Reader::Daemon)
}

/// Parses Corefile text for `reader`; `env` looks up `{$NAME}` placeholders.
pub fn parse_as(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    reader: Reader,
) -> Result<Config, Error> {
    let fail = |(line, message): Failure| Error { source: source.to_path_buf(), line, message };
    let tokens = lex(text, env).map_err(fail)?;
    if reader == Reader::Daemon {
        // The daemon uses every directive, so every variable must be set.
        tokens.iter().try_for_each(Token::check_set).map_err(fail)?;
    }
    let mut parser = Parser { tokens, pos: 0 };
    let blocks = parser.blocks().map_err(fail)?;
    if blocks.is_empty() {
        return Err(fail((0, "no server block; expected something like `. { idetcd { ... } }`".into())));
    }
    build(&blocks, source, reader).map_err(fail)
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Clone, Debug, PartialEq, Eq)]
struct Token {
    text: String,
    line: usize,
    /// Quoted tokens are never braces.
    quoted: bool,
    /// The first `{$NAME}` in it that is not set (and has no default); its text keeps the
    /// placeholder. It is an error once the token is used, not before: see `Reader`.
    unset: Option<String>,
}

impl Token {
    fn is(&self, brace: &str) -> bool {
        !self.quoted && self.text == brace
    }

    /// An unset variable is an error, not an empty string, which would only surface later as a
    /// puzzling message.
    fn check_set(&self) -> Result<(), Failure> {
        match &self.unset {
            None => Ok(()),
            Some(name) => Err((self.line, format!("environment variable {name} is not set"))),
        }
    }
}

type Failure = (usize, String);

fn lex(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Token>, Failure> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let token = |word: &str, line: usize, quoted: bool| {
        let (text, unset) = substitute(word, env);
        Token { text, line, quoted, unset }
    };
    while let Some(&c) = chars.peek() {
        if c == '\n' {
            line += 1;
            chars.next();
        } else if c.is_whitespace() {
            chars.next();
        } else if c == '#' {
            while chars.peek().is_some_and(|&c| c != '\n') {
                chars.next();
            }
        } else if c == '"' {
            let start = line;
            chars.next();
            let mut word = String::new();
            loop {
                match chars.next() {
                    None => return Err((start, "unterminated quoted string".into())),
                    Some('"') => break,
                    Some('\\') if matches!(chars.peek(), Some('"') | Some('\\')) => {
                        word.push(chars.next().unwrap_or('\\'))
                    }
                    Some(c) => {
                        if c == '\n' {
                            line += 1;
                        }
                        word.push(c);
                    }
                }
            }
            tokens.push(token(&word, start, true));
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
            tokens.push(token(&word, line, false));
        }
    }
    Ok(tokens)
}

/// Replaces `{$NAME}` and `{$NAME:default}`; also says the first variable that is unset and has no
/// default, whose placeholder stays in the text.
fn substitute(word: &str, env: &dyn Fn(&str) -> Option<String>) -> (String, Option<String>) {
    let mut out = String::new();
    let mut unset = None;
    let mut rest = word;
    while let Some(start) = rest.find("{$") {
        let Some(len) = rest[start..].find('}') else { break };
        let inner = &rest[start + 2..start + len];
        let (name, default) = match inner.split_once(':') {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        out.push_str(&rest[..start]);
        match env(name).or_else(|| default.map(str::to_string)) {
            Some(value) => out.push_str(&value),
            None => {
                unset.get_or_insert_with(|| name.to_string());
                out.push_str(&rest[start..=start + len]);
            }
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    (out, unset)
}

// ---------------------------------------------------------------------------------------------
// Blocks

#[derive(Debug)]
struct Block {
    keys: Vec<Token>,
    line: usize,
    directives: Vec<Directive>,
}

#[derive(Debug)]
struct Directive {
    name: Token,
    args: Vec<Token>,
    block: Option<Vec<Directive>>,
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn blocks(&mut self) -> Result<Vec<Block>, Failure> {
        let mut blocks = Vec::new();
        while let Some(first) = self.peek().cloned() {
            if first.is("{") || first.is("}") {
                return Err((
                    first.line,
                    format!("unexpected '{}': expected a server block key such as `.:53`", first.text),
                ));
            }
            let mut keys = Vec::new();
            while let Some(t) = self.peek() {
                if t.line != first.line || t.is("{") {
                    break;
                }
                keys.push(self.next().unwrap_or_else(|| first.clone()));
            }
            match self.next() {
                Some(t) if t.is("{") && t.line == first.line => {}
                _ => return Err((first.line, "expected '{' after the server block key(s) on the same line".into())),
            }
            let directives = self.directives(first.line)?;
            blocks.push(Block { keys, line: first.line, directives });
        }
        Ok(blocks)
    }

    /// Directives up to and including the closing brace of a block opened on `opened`.
    fn directives(&mut self, opened: usize) -> Result<Vec<Directive>, Failure> {
        let mut directives = Vec::new();
        loop {
            let Some(name) = self.next() else {
                return Err((opened, "block opened here is never closed with '}'".into()));
            };
            if name.is("}") {
                return Ok(directives);
            }
            if name.is("{") {
                return Err((name.line, "unexpected '{': a block must follow a directive name".into()));
            }
            let mut args = Vec::new();
            let mut block = None;
            while let Some(t) = self.peek() {
                if t.line != name.line || t.is("}") {
                    break;
                }
                let t = self.next().unwrap_or_else(|| name.clone());
                if t.is("{") {
                    block = Some(self.directives(t.line)?);
                    break;
                }
                args.push(t);
            }
            directives.push(Directive { name, args, block });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Directives into settings

fn build(blocks: &[Block], source: &Path, reader: Reader) -> Result<Config, Failure> {
    let (home, idetcd) = idetcd_block(blocks)?;
    if reader == Reader::Client {
        check_set(idetcd)?;
    }
    let mut settings = Settings::default();
    for d in idetcd.block.as_deref().unwrap_or_default() {
        settings.apply(d)?;
    }
    let roles = roles(&settings, idetcd.name.line)?;
    // Endpoints are settled last: `tls` makes a bare host:port mean https.
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    let endpoints = match &settings.endpoints {
        None => vec![format!("{scheme}://localhost:2379")],
        Some(args) => {
            // `endpoint a:2379,b:2379`, as etcdctl takes them, also mixed with spaces.
            let words = args.iter().flat_map(|a| a.text.split(',').filter(|w| !w.is_empty()).map(move |w| (a, w)));
            let endpoints: Vec<String> =
                words.map(|(a, w)| endpoint_url(w, scheme).map_err(|m| (a.line, m))).collect::<Result<_, _>>()?;
            if endpoints.is_empty() {
                return Err((args[0].line, "endpoint needs at least one URL".into()));
            }
            endpoints
        }
    };
    if let (Some((line, _)), Some(plain)) = (&settings.tls, endpoints.iter().find(|e| e.starts_with("http://"))) {
        return Err((*line, format!("tls is configured but endpoint {plain} is plain http://; use https://")));
    }
    // Certificate paths are relative to the Corefile, wherever the daemon was started from.
    let base = source.parent().unwrap_or(Path::new("."));
    let tls = settings.tls.map(|(_, files)| config::TlsFiles {
        cert: files.cert.map(|p| base.join(p)),
        key: files.key.map(|p| base.join(p)),
        ca: files.ca.map(|p| base.join(p)),
    });
    let server = match reader {
        Reader::Daemon => servers(blocks, home, roles[0].pattern.zone(), base)?,
        Reader::Client => Server::default(),
    };
    Ok(Config {
        source: source.to_path_buf(),
        warnings: server.warnings,
        notes: server.notes,
        listen: server.listen.map(|(_, listen)| listen).unwrap_or_default(),
        forward: server.forward.map(|(_, forward)| forward),
        health: server.health,
        prometheus: server.prometheus,
        ready: server.ready,
        log: server.log,
        port: server.port.map_or(config::DEFAULT_PORT, |(port, _)| port),
        endpoints,
        tls,
        credentials: settings.credentials,
        roles,
        ipv4: settings.ipv4,
        ipv6: settings.ipv6,
        ttl: settings.ttl.unwrap_or(config::DEFAULT_TTL),
        nameservers: settings.nameservers.unwrap_or(config::DEFAULT_NAMESERVERS),
        lease: settings.lease.unwrap_or(config::DEFAULT_LEASE),
        // `poll` alone keeps its old meaning, polling only; with `watch`, it polls underneath.
        follow: match (settings.poll, settings.watch) {
            (None, _) => Follow::Watch,
            (Some(every), None) => Follow::Poll(every),
            (Some(every), Some(_)) => Follow::WatchAndPoll(every),
        },
        autosync: settings.autosync.unwrap_or(Some(config::DEFAULT_AUTOSYNC)),
        threads: settings.threads.unwrap_or(1),
    })
}

/// The one `idetcd` directive of the file, and the index of its server block.
fn idetcd_block(blocks: &[Block]) -> Result<(usize, &Directive), Failure> {
    let mut found: Option<(usize, &Directive)> = None;
    for (i, block) in blocks.iter().enumerate() {
        for d in block.directives.iter().filter(|d| d.name.text == "idetcd") {
            if let Some((first_block, first)) = found {
                let message = match first_block == i {
                    true => "idetcd is configured twice in this server block".to_string(),
                    false => format!(
                        "idetcd is configured in a second server block (the first on line {}): exactly one block serves the cluster",
                        first.name.line
                    ),
                };
                return Err((d.name.line, message));
            }
            if let Some(a) = d.args.first() {
                return Err((a.line, format!("idetcd takes no arguments, only a block: unexpected {:?}", a.text)));
            }
            found = Some((i, d));
        }
    }
    match (found, blocks) {
        (Some(found), _) => Ok(found),
        (None, [block]) => Err((block.line, "server block has no idetcd { ... } block".into())),
        (None, _) => Err((0, "no server block has an idetcd { ... } block".into())),
    }
}

/// Every variable a directive (and its block) uses is set.
fn check_set(d: &Directive) -> Result<(), Failure> {
    d.name.check_set()?;
    d.args.iter().try_for_each(Token::check_set)?;
    d.block.iter().flatten().try_for_each(check_set)
}

/// What the server blocks say, all of them together: idetcd listens once, on one port and one set
/// of addresses, for every block. Each with the line it was given on, for errors.
#[derive(Default)]
struct Server {
    port: Option<(u16, usize)>,
    listen: Option<(usize, Vec<config::Listen>)>,
    forward: Option<(usize, config::Forward)>,
    health: Option<std::net::SocketAddr>,
    prometheus: Option<std::net::SocketAddr>,
    ready: Option<std::net::SocketAddr>,
    log: bool,
    warnings: Vec<String>,
    notes: Vec<String>,
}

/// A server block key, `dns://tf.local:53`: its zone and port.
struct Key {
    /// As written, without scheme and port; `.` when empty.
    zone: String,
    wire: Vec<u8>,
    port: u16,
    line: usize,
}

/// The server blocks' directives, `home` being the one with `idetcd`, whose pattern is in `zone`.
///
/// Several blocks are read as CoreDNS users split zones, `tf.local { idetcd {...} }` and
/// `. { forward . 10.0.0.2 }`, with what one process on one port can do: the idetcd block answers
/// the cluster's zone (its keys are `.`, that zone or a zone above it); a `forward` in another
/// block forwards the names its keys and its FROM both cover. No key may name a zone twice or one
/// inside the cluster's, or sit between the cluster's zone and the idetcd block's key (CoreDNS would
/// send the cluster's names to it).
fn servers(blocks: &[Block], home: usize, zone: &str, base: &Path) -> Result<Server, Failure> {
    let zone_wire = crate::wire::wire_name(zone).map_err(|e| (blocks[home].line, e))?;
    let home_keys = keys(&blocks[home])?;
    for key in &home_keys {
        if !crate::wire::is_within(&zone_wire, &key.wire) {
            return Err((
                key.line,
                format!(
                    "server block key {}: this block's idetcd serves {zone}, its pattern's zone; the block's keys may be `.`, {zone} or a zone above it",
                    key.zone
                ),
            ));
        }
    }
    // The closest of the idetcd block's keys to the cluster's zone.
    let closest = home_keys.iter().map(|k| k.wire.len()).max().unwrap_or(1);
    let mut server = Server::default();
    let mut seen: Vec<(Vec<u8>, usize)> = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let keys = keys(block)?;
        let port = keys.first().map_or(config::DEFAULT_PORT, |k| k.port);
        match server.port {
            None => server.port = Some((port, block.line)),
            Some((first, line)) if first != port => {
                return Err((
                    block.line,
                    format!(
                        "this server block is on port {port}, the one on line {line} on port {first}: idetcd answers on one port, give every block the same"
                    ),
                ))
            }
            Some(_) => {}
        }
        for key in &keys {
            if let Some((_, line)) = seen.iter().find(|(wire, _)| *wire == key.wire) {
                return Err((
                    key.line,
                    format!("zone {} has a server block already, on line {line}: give each zone one block", key.zone),
                ));
            }
            seen.push((key.wire.clone(), key.line));
            if i == home {
                continue;
            }
            if crate::wire::is_within(&key.wire, &zone_wire) {
                return Err((
                    key.line,
                    format!(
                        "server block key {} is within {zone}, the cluster's zone, which the idetcd block on line {} answers",
                        key.zone, blocks[home].line
                    ),
                ));
            }
            if crate::wire::is_within(&zone_wire, &key.wire) && key.wire.len() > closest {
                return Err((
                    key.line,
                    format!(
                        "server block key {} is closer to {zone} than the idetcd block's keys: CoreDNS would send the cluster's names to this block; key the idetcd block {zone}",
                        key.zone
                    ),
                ));
            }
        }
        // In the idetcd block, forward's FROM alone says what is forwarded, as with one block.
        let forward_within: &[Key] = if i == home { &[] } else { &keys };
        server.block(block, forward_within, base)?;
    }
    Ok(server)
}

/// The keys of a block, all on one port.
fn keys(block: &Block) -> Result<Vec<Key>, Failure> {
    let mut keys: Vec<Key> = Vec::new();
    for token in &block.keys {
        let text = token.text.trim_end_matches(',');
        let text = text.strip_prefix("dns://").unwrap_or(text);
        if let Some((scheme, _)) = text.split_once("://") {
            return Err((token.line, format!("{scheme}:// servers are not supported, only plain DNS")));
        }
        let (zone, port) = match text.rsplit_once(':') {
            Some((zone, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| (token.line, format!("{:?} is not a valid port", p)))?;
                (zone, port)
            }
            None => (text, config::DEFAULT_PORT),
        };
        let zone = if zone.is_empty() { "." } else { zone };
        let wire = crate::wire::wire_name(zone).map_err(|e| (token.line, format!("server block key: {e}")))?;
        if keys.first().is_some_and(|k| k.port != port) {
            return Err((token.line, "all keys of a server block must use the same port".into()));
        }
        keys.push(Key { zone: zone.to_string(), wire, port, line: token.line });
    }
    Ok(keys)
}

impl Server {
    /// One server block's directives; a `forward` there forwards names within `forward_within`
    /// only (the block's keys), when there are any.
    fn block(&mut self, block: &Block, forward_within: &[Key], base: &Path) -> Result<(), Failure> {
        let mut listen: Option<(usize, Vec<config::Listen>)> = None;
        for d in &block.directives {
            let line = d.name.line;
            let name = d.name.text.as_str();
            match name {
                "idetcd" => {}
                "bind" => {
                    no_block(d)?;
                    if d.args.is_empty() {
                        return Err((line, "bind needs at least one address or interface".into()));
                    }
                    let (_, list) = listen.get_or_insert_with(|| (line, Vec::new()));
                    for a in &d.args {
                        list.push(listen_word(a)?);
                    }
                }
                "forward" => {
                    if let Some((first, _)) = self.forward {
                        return Err((
                            line,
                            format!("forward is given twice, first on line {first}: idetcd forwards one zone"),
                        ));
                    }
                    if d.block.is_some() {
                        return Err((
                            line,
                            "forward options are not supported; give FROM and the upstream servers".into(),
                        ));
                    }
                    let mut forward = forward_directive(d, base, &mut self.warnings)?;
                    forward.from = forwarded_zone(d, &forward.from, forward_within)?;
                    self.forward = Some((line, forward));
                }
                // CoreDNS's plugin names and default addresses.
                "health" => monitor_address(d, &mut self.health, ":8080")?,
                "prometheus" => monitor_address(d, &mut self.prometheus, "localhost:9153")?,
                "ready" => monitor_address(d, &mut self.ready, ":8181")?,
                "log" => {
                    no_options(d, "idetcd logs every question at info, as CoreDNS's `log` does without arguments")?;
                    self.log = true;
                }
                // Errors are logged anyway.
                "errors" => no_options(d, "errors are always logged")?,
                "cache" => {
                    no_block(d)?;
                    // `cache [TTL] [ZONES...]`
                    if let Some(ttl) = d.args.first().filter(|a| a.text.starts_with(|c: char| c.is_ascii_digit())) {
                        if ttl.text.parse::<u32>().is_err() {
                            return Err((ttl.line, format!("cache: {:?} is not a TTL in seconds", ttl.text)));
                        }
                    }
                    self.note("cache: answers already come from memory; nothing to cache, the directive is ignored");
                }
                "reload" => {
                    no_block(d)?;
                    if d.args.len() > 2 {
                        return Err((
                            line,
                            "reload takes at most an interval and a jitter, such as `reload 30s 15s`".into(),
                        ));
                    }
                    for a in &d.args {
                        config::parse_duration(&a.text).map_err(|m| (a.line, format!("reload: {m}")))?;
                    }
                    self.note("reload: idetcd does not poll the Corefile for changes; it reads it again on SIGHUP");
                }
                other => {
                    return Err((
                        line,
                        format!("unknown directive {other:?} in server block (known: {SERVER_DIRECTIVES})"),
                    ));
                }
            }
        }
        let Some((line, list)) = listen else { return Ok(()) };
        match &self.listen {
            None => self.listen = Some((line, list)),
            Some((_, first)) if first.iter().all(|l| list.contains(l)) && list.iter().all(|l| first.contains(l)) => {}
            Some((first_line, first)) => {
                let words = |list: &[config::Listen]| list.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(" ");
                return Err((
                    line,
                    format!(
                        "bind {} differs from bind {} on line {first_line}: idetcd listens on one set of addresses for every server block; give each the same, or bind in one block only",
                        words(&list),
                        words(first)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn note(&mut self, note: &str) {
        if !self.notes.iter().any(|n| n == note) {
            self.notes.push(note.to_string());
        }
    }
}

/// A directive without arguments and options: `log`, `errors`.
fn no_options(d: &Directive, why: &str) -> Result<(), Failure> {
    let name = &d.name.text;
    if d.block.is_some() {
        return Err((d.name.line, format!("{name} options are not supported; {why}")));
    }
    match d.args.first() {
        None => Ok(()),
        Some(a) => Err((a.line, format!("{name} takes no arguments here: unexpected {:?}; {why}", a.text))),
    }
}

/// One word of `bind`: an address or an interface name, as Linux allows them, less words of
/// digits and dots only, which are mistyped addresses.
fn listen_word(a: &Token) -> Result<config::Listen, Failure> {
    if let Ok(ip) = a.text.parse::<IpAddr>() {
        return Ok(config::Listen::Address(ip));
    }
    let text = a.text.as_str();
    let interface = (1..16).contains(&text.len())
        && !text.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
        && !text.chars().all(|c| c.is_ascii_digit() || c == '.');
    match interface {
        true => Ok(config::Listen::Interface(text.to_string())),
        false => Err((a.line, format!("bind: {text:?} is neither an IP address nor an interface name"))),
    }
}

/// What a `forward FROM` forwards: the names both its FROM and the keys cover (FROM alone without
/// keys), which must be one zone.
fn forwarded_zone(d: &Directive, from: &str, keys: &[Key]) -> Result<String, Failure> {
    let line = d.name.line;
    let from_wire = crate::wire::wire_name(from).map_err(|e| (line, format!("forward: {e}")))?;
    let mut zones: Vec<(&str, &[u8])> = Vec::new();
    for key in keys {
        let zone = match (crate::wire::is_within(&from_wire, &key.wire), crate::wire::is_within(&key.wire, &from_wire))
        {
            (true, _) => (from, from_wire.as_slice()),
            (_, true) => (key.zone.as_str(), key.wire.as_slice()),
            _ => {
                return Err((
                    line,
                    format!("forward {from}: this server block only gets names under {}, none under {from}", key.zone),
                ))
            }
        };
        if !zones.iter().any(|(_, wire)| *wire == zone.1) {
            zones.push(zone);
        }
    }
    match zones.as_slice() {
        [] => Ok(from.to_string()),
        [(zone, _)] => Ok(zone.to_string()),
        [(a, _), (b, _), ..] => Err((
            line,
            format!("forward here would forward both {a} and {b}; idetcd forwards one zone: give this block one key"),
        )),
    }
}

#[derive(Default)]
struct Settings {
    endpoints: Option<Vec<Token>>,
    /// With the line it was given on.
    tls: Option<(usize, config::TlsFiles)>,
    credentials: Option<config::Credentials>,
    /// With the line it was given on.
    limit: Option<(usize, u32)>,
    /// With the line it was given on.
    start: Option<(usize, u32)>,
    /// With the line it was given on.
    pattern: Option<(usize, Pattern)>,
    roles: Vec<RoleLine>,
    ipv4: Option<std::net::Ipv4Addr>,
    ipv6: Option<std::net::Ipv6Addr>,
    address_given: bool,
    ttl: Option<u32>,
    nameservers: Option<u32>,
    lease: Option<u32>,
    poll: Option<std::time::Duration>,
    watch: Option<bool>,
    autosync: Option<Option<std::time::Duration>>,
    threads: Option<u32>,
}

impl Settings {
    fn apply(&mut self, d: &Directive) -> Result<(), Failure> {
        no_block(d)?;
        let line = d.name.line;
        let name = d.name.text.as_str();
        let twice = || (line, format!("{name} is given twice"));
        match name {
            "endpoint" => {
                if d.args.is_empty() {
                    return Err((line, "endpoint needs at least one URL".into()));
                }
                replace(&mut self.endpoints, d.args.clone()).map_err(|_| twice())
            }
            "tls" => {
                // CoreDNS's etcd plugin syntax: nothing (public CAs), CACERT, CERT KEY, or all three.
                let path = |i: usize| Some(PathBuf::from(&d.args[i].text));
                let files = match d.args.len() {
                    0 => config::TlsFiles::default(),
                    1 => config::TlsFiles { ca: path(0), ..Default::default() },
                    2 => config::TlsFiles { cert: path(0), key: path(1), ca: None },
                    3 => config::TlsFiles { cert: path(0), key: path(1), ca: path(2) },
                    _ => return Err((line, "tls takes [CACERT], [CERT KEY] or [CERT KEY CACERT]".into())),
                };
                replace(&mut self.tls, (line, files)).map_err(|_| twice())
            }
            "credentials" => {
                let [user, password] = d.args.as_slice() else {
                    return Err((line, "credentials takes a user name and a password".into()));
                };
                let credentials =
                    config::Credentials { user: user.text.clone(), password: config::Secret(password.text.clone()) };
                replace(&mut self.credentials, credentials).map_err(|_| twice())
            }
            "limit" => {
                let n = number(d, 1, MAX_LIMIT)?;
                replace(&mut self.limit, (line, n)).map_err(|_| twice())
            }
            "start" => {
                let n = number(d, 0, u32::MAX)?;
                replace(&mut self.start, (line, n)).map_err(|_| twice())
            }
            "pattern" => {
                if d.args.is_empty() {
                    return Err((line, "pattern needs a name pattern, such as worker{{.ID}}.tf.local.".into()));
                }
                let (words, rest) = split_pattern(&d.args);
                if let Some(extra) = rest.first() {
                    return Err((
                        extra.line,
                        format!("pattern takes one pattern: unexpected {:?} after it", extra.text),
                    ));
                }
                let pattern = pattern_words(words, line)?;
                replace(&mut self.pattern, (line, pattern)).map_err(|_| twice())
            }
            "role" => {
                let usage = || {
                    let example = "role worker worker{{.ID}}.tf.local. 16";
                    (line, format!("role takes a name, a pattern and optionally a limit: {example}"))
                };
                let [name, rest @ ..] = d.args.as_slice() else { return Err(usage()) };
                let (words, after) = split_pattern(rest);
                if words.is_empty() {
                    return Err(usage());
                }
                let limit = match after {
                    [] => None,
                    [limit] => Some(limit),
                    [_, extra, ..] => {
                        return Err((
                            extra.line,
                            format!("role {}: unexpected {:?} after the limit", name.text, extra.text),
                        ))
                    }
                };
                if !config::is_role_name(&name.text) {
                    return Err((
                        name.line,
                        format!("role: {:?} is not a role name (a letter, then letters, digits or _)", name.text),
                    ));
                }
                if self.roles.iter().any(|r| r.name == name.text) {
                    return Err((line, format!("role {} is given twice", name.text)));
                }
                if self.roles.len() == MAX_ROLES {
                    return Err((line, format!("at most {MAX_ROLES} roles are supported")));
                }
                let limit = match limit {
                    None => config::DEFAULT_LIMIT,
                    Some(a) => match a.text.parse::<u32>() {
                        Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                        _ => {
                            return Err((
                                a.line,
                                format!("role {}: limit {:?} is not a number from 1 to {MAX_LIMIT}", name.text, a.text),
                            ))
                        }
                    },
                };
                let pattern = pattern_words(words, line)?;
                self.roles.push(RoleLine { line, name: name.text.clone(), pattern, limit });
                Ok(())
            }
            "address" => {
                if std::mem::replace(&mut self.address_given, true) {
                    return Err(twice());
                }
                if d.args.is_empty() {
                    return Err((line, "address needs an IPv4 address, an IPv6 address, or one of each".into()));
                }
                for a in &d.args {
                    let ip: IpAddr =
                        a.text.parse().map_err(|_| (a.line, format!("address: {:?} is not an IP address", a.text)))?;
                    let duplicate = match ip {
                        IpAddr::V4(v4) => self.ipv4.replace(v4).is_some(),
                        IpAddr::V6(v6) => self.ipv6.replace(v6).is_some(),
                    };
                    if duplicate {
                        return Err((a.line, "address takes at most one IPv4 and one IPv6 address".into()));
                    }
                    if ip.is_unspecified() || ip.is_multicast() {
                        return Err((a.line, format!("address: {ip} cannot be published as a node's address")));
                    }
                }
                Ok(())
            }
            "ttl" => {
                let n = number(d, 0, i32::MAX as u32)?;
                replace(&mut self.ttl, n).map_err(|_| twice())
            }
            "nameservers" => {
                let n = number(d, 1, config::MAX_NAMESERVERS)?;
                replace(&mut self.nameservers, n).map_err(|_| twice())
            }
            "lease" => {
                let n = number(d, 1, 86_400)?;
                replace(&mut self.lease, n).map_err(|_| twice())
            }
            "poll" => {
                let [a] = d.args.as_slice() else {
                    return Err((line, "poll takes one duration, such as 500ms or 2s".into()));
                };
                let poll = config::parse_duration(&a.text).map_err(|m| (a.line, format!("poll: {m}")))?;
                if poll < std::time::Duration::from_millis(10) {
                    return Err((a.line, "poll must be at least 10ms".into()));
                }
                replace(&mut self.poll, poll).map_err(|_| twice())
            }
            "watch" => {
                if let Some(a) = d.args.first() {
                    return Err((a.line, format!("watch takes no arguments: unexpected {:?}", a.text)));
                }
                replace(&mut self.watch, true).map_err(|_| twice())
            }
            "autosync" => {
                let [a] = d.args.as_slice() else {
                    return Err((line, "autosync takes one duration, such as 5m, or off".into()));
                };
                let every = match a.text.as_str() {
                    "off" => None,
                    text => {
                        let every = config::parse_duration(text).map_err(|m| (a.line, format!("autosync: {m}")))?;
                        if every < std::time::Duration::from_secs(1) {
                            return Err((a.line, "autosync must be at least 1s, or off".into()));
                        }
                        Some(every)
                    }
                };
                replace(&mut self.autosync, every).map_err(|_| twice())
            }
            "threads" => {
                let n = number(d, 1, 64)?;
                replace(&mut self.threads, n).map_err(|_| twice())
            }
            other => Err((line, format!("unknown directive {other:?} in idetcd block (known: {IDETCD_DIRECTIVES})"))),
        }
    }
}

const MAX_LIMIT: u32 = 1_000_000;

/// A `role NAME PATTERN [LIMIT]` line, before `start` is known.
#[derive(Clone)]
struct RoleLine {
    line: usize,
    name: String,
    pattern: Pattern,
    limit: u32,
}

/// The words of a pattern, and what follows it: `worker{{ .ID }}.tf.local.` arrives as three
/// words, up to the one that closes the template.
fn split_pattern(words: &[Token]) -> (&[Token], &[Token]) {
    let end = words.iter().position(|w| w.text.contains("}}")).map_or(1, |i| i + 1).min(words.len());
    words.split_at(end)
}

/// A pattern's words as one pattern.
fn pattern_words(words: &[Token], line: usize) -> Result<Pattern, Failure> {
    let text = words.iter().map(|a| a.text.as_str()).collect::<Vec<_>>().join(" ");
    Pattern::parse(&text).map_err(|e| (line, format!("pattern {text:?}: {e}")))
}

/// The roles: the `role` lines, or the one role of `pattern` and `limit`; each with its IDs, all in
/// one zone, no two whose names could collide.
fn roles(settings: &Settings, idetcd_line: usize) -> Result<Vec<config::Role>, Failure> {
    let first = settings.start.map_or(1, |(_, n)| n);
    let lines: Vec<RoleLine> = match (&settings.pattern, settings.roles.as_slice()) {
        (Some((line, _)), [role, ..]) => {
            return Err((
                (*line).max(role.line),
                "pattern and role cannot be used together: write each role as `role NAME PATTERN [LIMIT]`".into(),
            ))
        }
        (None, []) => {
            return Err((
                idetcd_line,
                "idetcd needs a pattern, such as `pattern worker{{.ID}}.tf.local.`, or roles, such as `role worker worker{{.ID}}.tf.local. 16`".into(),
            ))
        }
        (Some((line, pattern)), []) => vec![RoleLine {
            line: *line,
            name: role_name_of(pattern),
            pattern: pattern.clone(),
            limit: settings.limit.map_or(config::DEFAULT_LIMIT, |(_, n)| n),
        }],
        (None, roles) => {
            if let Some((line, _)) = settings.limit {
                return Err((line, "limit goes with pattern; give each role its own: `role NAME PATTERN LIMIT`".into()));
            }
            roles.to_vec()
        }
    };
    let mut roles: Vec<config::Role> = Vec::with_capacity(lines.len());
    for role in lines {
        let Some(last) = first.checked_add(role.limit - 1) else {
            let line = settings.start.map_or(role.line, |(line, _)| line);
            return Err((
                line,
                format!("start {first} with limit {} runs past the largest ID, {}", role.limit, u32::MAX),
            ));
        };
        if let Some(other) = roles.first().filter(|o| !o.pattern.zone().eq_ignore_ascii_case(role.pattern.zone())) {
            return Err((
                role.line,
                format!(
                    "role {} is in zone {}, role {} in {}: all roles share one zone",
                    role.name,
                    role.pattern.zone(),
                    other.name,
                    other.pattern.zone()
                ),
            ));
        }
        if let Some(other) = roles.iter().find(|o| o.pattern.overlaps(&role.pattern)) {
            return Err((
                role.line,
                format!(
                    "role {}: names of {} could be names of role {}'s {}; let the text before {{{{.ID}}}} differ by more than digits",
                    role.name, role.pattern, other.name, other.pattern
                ),
            ));
        }
        roles.push(config::Role { name: role.name, pattern: role.pattern, ids: first..=last });
    }
    Ok(roles)
}

/// The role a lone `pattern` makes, named after the text before `{{.ID}}`: `worker` for
/// `worker{{.ID}}.tf.local.`, `gpu_node` for `gpu-node-{{.ID}}.x.`; `node` when that text names
/// nothing.
fn role_name_of(pattern: &Pattern) -> String {
    let name: String = pattern.prefix().chars().map(|c| if c == '-' { '_' } else { c }).collect();
    let name = name.trim_matches('_');
    match config::is_role_name(name) {
        true => name.to_string(),
        false => "node".to_string(),
    }
}

/// `forward FROM TO…` as CoreDNS writes it: each TO an address (`10.0.0.1`, `10.0.0.1:5353`,
/// `[fd00::1]:53`, `dns://10.0.0.1`) or a resolv.conf-style file whose `nameserver` lines name them.
fn forward_directive(d: &Directive, base: &Path, warnings: &mut Vec<String>) -> Result<config::Forward, Failure> {
    let line = d.name.line;
    let [from, to @ ..] = d.args.as_slice() else {
        return Err((line, "forward needs a zone (FROM, `.` for all names) and upstream servers".into()));
    };
    if to.is_empty() {
        return Err((line, "forward needs at least one upstream server after FROM".into()));
    }
    let zone = from.text.strip_prefix("dns://").unwrap_or(&from.text);
    crate::wire::wire_name(zone).map_err(|e| (from.line, format!("forward: {e}")))?;
    let mut upstreams = Vec::new();
    for a in to {
        let address = upstream(&a.text);
        let looks_like_file =
            !a.text.contains("://") && (a.text.contains('/') || !a.text.contains(|c: char| c.is_ascii_digit()));
        if address.is_ok() || !looks_like_file {
            upstreams.push(address.map_err(|m| (a.line, format!("forward: {m}")))?);
            continue;
        }
        // A resolv.conf-style file, relative to the Corefile like every other path here.
        let path = base.join(&a.text);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| (a.line, format!("forward: cannot read {}: {e}", path.display())))?;
        let mut found = 0;
        for ip in text.lines().filter_map(|l| l.trim().strip_prefix("nameserver")).map(str::trim) {
            match upstream(ip) {
                Ok(address) => {
                    upstreams.push(address);
                    found += 1;
                }
                Err(why) => warnings.push(format!("forward: leaving out nameserver {ip} of {}: {why}", path.display())),
            }
        }
        if found == 0 {
            return Err((a.line, format!("forward: no usable nameserver line in {}", path.display())));
        }
    }
    if upstreams.len() > 15 {
        return Err((line, "forward takes at most 15 upstream servers".into()));
    }
    Ok(config::Forward { from: zone.to_string(), upstreams })
}

/// `health [ADDR]` and `prometheus [ADDR]`: `:8080` is every address, `localhost` is 127.0.0.1.
fn monitor_address(d: &Directive, slot: &mut Option<std::net::SocketAddr>, default: &str) -> Result<(), Failure> {
    let name = &d.name.text;
    if d.block.is_some() {
        return Err((d.name.line, format!("{name} options are not supported")));
    }
    let text = match d.args.as_slice() {
        [] => default,
        [a] => a.text.as_str(),
        _ => return Err((d.name.line, format!("{name} takes one address, such as {default}"))),
    };
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| (d.name.line, format!("{name}: {text:?} needs a port, as in {default}")))?;
    let port: u16 = port.parse().map_err(|_| (d.name.line, format!("{name}: {port:?} is not a port")))?;
    let ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
        "" => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        ip => ip.parse().map_err(|_| (d.name.line, format!("{name}: {host:?} is not an IP address")))?,
    };
    replace(slot, std::net::SocketAddr::new(ip, port)).map_err(|_| (d.name.line, format!("{name} is given twice")))
}

fn upstream(text: &str) -> Result<std::net::SocketAddr, String> {
    let bare = text.strip_prefix("dns://").unwrap_or(text);
    if let Some((scheme, _)) = bare.split_once("://") {
        return Err(format!("{scheme}:// upstreams are not supported, only plain DNS"));
    }
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    match bare.parse::<std::net::SocketAddr>() {
        Ok(address) if address.port() != 0 => Ok(address),
        _ => Err(format!("{text:?} is not an IP address or IP:port")),
    }
}

fn replace<T>(slot: &mut Option<T>, value: T) -> Result<(), ()> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(()),
    }
}

fn no_block(d: &Directive) -> Result<(), Failure> {
    match d.block {
        Some(_) => Err((d.name.line, format!("{} does not take a block", d.name.text))),
        None => Ok(()),
    }
}

fn number(d: &Directive, min: u32, max: u32) -> Result<u32, Failure> {
    let name = &d.name.text;
    let [a] = d.args.as_slice() else {
        return Err((d.name.line, format!("{name} takes one number")));
    };
    match a.text.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err((a.line, format!("{name}: {:?} is not a number from {min} to {max}", a.text))),
    }
}

/// `http://host:port`, `https://host:port`, or a bare `host:port` as the etcd Go client accepts
/// (with `scheme`); the port defaults to etcd's 2379.
fn endpoint_url(text: &str, scheme: &str) -> Result<String, String> {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some((scheme, _)) => {
            return Err(format!("endpoint {text:?}: scheme {scheme}:// is not supported, use http:// or https://"))
        }
        None => (scheme, text),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(format!("endpoint {text:?} has no usable host"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| format!("endpoint {text:?}: unclosed '['"))?;
            (format!("[{host}]"), after.strip_prefix(':'))
        }
        None if authority.matches(':').count() > 1 => {
            return Err(format!("endpoint {text:?}: write IPv6 addresses in brackets, as http://[::1]:2379"));
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        },
    };
    let port = match port {
        None => 2379,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("endpoint {text:?}: {p:?} is not a valid port"))?,
    };
    Ok(format!("{scheme}://{host}:{port}{path}"))
}

#[cfg(test)]
mod tests;
