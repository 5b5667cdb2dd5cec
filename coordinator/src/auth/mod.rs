//! Who may talk to the coordinator: TLS and mutual TLS, client and admin tokens, and a budget of
//! failed attempts per peer address.
//!
//! - [`TokenSet`]: a token file holds `name sha256-hex` lines, never tokens; a presented token is
//!   hashed and compared in constant time ([`subtle`]). Client tokens are bound to the client's
//!   name; admin tokens (for the Jobs service) live in a separate file, so a client credential
//!   can never submit, cancel or read jobs.
//! - [`cert_name`]: with mutual TLS the client's name is its certificate's common name.
//! - [`FailureBudget`]: failed attempts are logged with the peer address; past the budget a
//!   peer's failures are answered `ResourceExhausted` and no longer logged one by one until its
//!   window ends (valid credentials from it still get in).
//! - [`generate_certs`] and [`generate_tokens`]: the `certs` and `tokens` commands (rcgen makes
//!   a CA, a server certificate and one certificate per client, for development and compose).
//!
//! Tokens are random 256-bit secrets, so one SHA-256 is the right hash: a slow password hash
//! (argon2) guards guessable passwords and would only slow every connection here.

/// The coordinator's checks at the door: client Hellos, admin calls, token reload.
pub(crate) mod gate;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// How long a peer's failed attempts count against it.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// SHA-256 of a token, as lowercase hex: what a token file holds.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.trim().as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Token hashes by name, read from a token file.
#[derive(Clone)]
pub struct TokenSet {
    entries: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: hashes stay out of logs.
        f.debug_struct("TokenSet")
            .field(
                "names",
                &self.entries.iter().map(|e| &e.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TokenSet {
    /// Parses a token file: one `name sha256-hex` per line; blank lines and `#` comments are
    /// skipped. Errors name the file and line.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut entries: Vec<(String, [u8; 32])> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |what: &str| {
                Error::Config(format!(
                    "{origin}:{}: {what} (expected `name sha256-hex`, as `shoal-coordinator tokens` writes)",
                    i + 1
                ))
            };
            let mut parts = line.split_whitespace();
            let (Some(name), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected two fields"));
            };
            let hash = unhex(&hash.to_ascii_lowercase())
                .ok_or_else(|| bad("the hash is not 64 hex digits"))?;
            if entries.iter().any(|e| e.0 == name) {
                return Err(bad(&format!("`{name}` appears twice")));
            }
            entries.push((name.to_string(), hash));
        }
        if entries.is_empty() {
            return Err(Error::Config(format!("{origin}: holds no token")));
        }
        Ok(TokenSet { entries })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read token file {}", path.display()), e))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `token` is `name`'s. Every entry is compared, in constant time, so neither the
    /// answer's timing nor its absence tells which names exist.
    pub fn verify(&self, name: &str, token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let mut ok = subtle::Choice::from(0);
        for (n, hash) in &self.entries {
            let same_name = subtle::Choice::from(u8::from(n == name));
            ok |= same_name & presented.ct_eq(hash);
        }
        bool::from(ok) && !token.trim().is_empty()
    }

    /// Names whose token `new` no longer holds (changed or removed): sessions that proved
    /// themselves with one of those tokens hold a credential that is no longer valid.
    pub fn revoked_in(&self, new: &TokenSet) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(n, h)| {
                !new.entries
                    .iter()
                    .any(|(m, g)| m == n && bool::from(h.ct_eq(g)))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The name whose token `token` is, if any (admin tokens: any entry will do).
    pub fn find(&self, token: &str) -> Option<&str> {
        let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let mut found = None;
        for (n, hash) in &self.entries {
            if bool::from(presented.ct_eq(hash)) {
                found = Some(n.as_str());
            }
        }
        found.filter(|_| !token.trim().is_empty())
    }
}

/// The name a client certificate carries: its subject's common name, else its first DNS name.
pub fn cert_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}

/// Failed attempts per peer address within [`FAILURE_WINDOW`].
#[derive(Debug)]
pub struct FailureBudget {
    per_window: u32,
    peers: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// What the budget says about a failure just recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Within the budget: log it.
    Logged,
    /// The failure that used the budget up: log it and say further ones are not logged.
    Exhausted,
    /// Past the budget: stay quiet.
    Quiet,
}

impl FailureBudget {
    pub fn new(per_window: u32) -> Self {
        FailureBudget {
            per_window: per_window.max(1),
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a failed attempt from `ip`.
    pub fn fail(&self, ip: Option<IpAddr>) -> Failure {
        let Some(ip) = ip else {
            return Failure::Logged;
        };
        let mut peers = self.lock();
        // Forget old windows now and then, so a scan from many addresses cannot grow the map
        // without bound.
        if peers.len() > 10_000 {
            peers.retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
        }
        let entry = peers.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        match entry.1.cmp(&self.per_window) {
            std::cmp::Ordering::Less => Failure::Logged,
            std::cmp::Ordering::Equal => Failure::Exhausted,
            std::cmp::Ordering::Greater => Failure::Quiet,
        }
    }
}

/// Who the Federation and Jobs services let in.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Client tokens, by client name (`--client-tokens`).
    pub client_tokens: Option<TokenSet>,
    /// Mutual TLS: a client's Hello name must be its certificate's name (`--client-ca`).
    pub client_certs: bool,
    /// Admin tokens for the Jobs service (`--admin-tokens`).
    pub admin_tokens: Option<TokenSet>,
}

impl AuthConfig {
    /// Whether clients must prove who they are.
    pub fn clients_authenticated(&self) -> bool {
        self.client_tokens.is_some() || self.client_certs
    }

    /// Refuses a setup that would leave the Jobs service open while clients must authenticate:
    /// then any client could submit and read jobs.
    pub fn check(&self) -> Result<()> {
        if self.clients_authenticated() && self.admin_tokens.is_none() {
            return Err(Error::Config(
                "clients must authenticate (--client-tokens or --client-ca) but the Jobs service has no admin credentials: pass --admin-tokens too".into(),
            ));
        }
        Ok(())
    }
}

/// The server's TLS settings from PEM files: its certificate and key, and with `client_ca` the
/// CA whose certificates clients must present (mutual TLS).
pub fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<tonic::transport::ServerTlsConfig> {
    let cert_pem = read_pem(cert, "--tls-cert")?;
    let key_pem = read_pem(key, "--tls-key")?;
    let mut tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read_pem(
            ca,
            "--client-ca",
        )?));
    }
    Ok(tls)
}

/// Reads a PEM file, saying which flag named it when it cannot be read or holds no PEM block.
pub fn read_pem(path: &Path, flag: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("{flag} {}: cannot read it", path.display()), e))?;
    if !text.contains("-----BEGIN ") {
        return Err(Error::Config(format!(
            "{flag} {}: not a PEM file (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(text)
}

/// What [`generate_certs`] wrote.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Per client, and last the operator's `admin`: name, certificate, key.
    pub clients: Vec<(String, PathBuf, PathBuf)>,
}

/// Writes a development CA (`ca.pem`, `ca.key`), a server certificate for `names` (DNS names or
/// IP addresses; `server.pem`, `server.key`), one client certificate per name in `clients` and
/// one for the operator, `admin` (`NAME.pem`, `NAME.key`, the name as common name), all under
/// `out`. Keys are written
/// readable by their owner only.
pub fn generate_certs(out: &Path, names: &[String], clients: &[String]) -> Result<CertFiles> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    let tls = |e: rcgen::Error| Error::Job(format!("cannot make certificates: {e}"));
    if names.is_empty() {
        return Err(Error::Config(
            "--names: the server certificate needs at least one name".into(),
        ));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Shoal development CA");
    ca_params.distinguished_name = dn;
    let ca_key = KeyPair::generate().map_err(tls)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls)?;
    write(&out.join("ca.pem"), &ca.pem(), false)?;
    write(&out.join("ca.key"), &ca_key_pem, true)?;

    let leaf =
        |cn: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
            let mut p = CertificateParams::new(sans).map_err(tls)?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            p.distinguished_name = dn;
            p.extended_key_usages = vec![usage];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().map_err(tls)?;
            let cert = p.signed_by(&key, &ca).map_err(tls)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
    let (server_pem, server_key) = leaf(
        &names[0],
        names.to_vec(),
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (server_cert, server_key_path) = (out.join("server.pem"), out.join("server.key"));
    write(&server_cert, &server_pem, false)?;
    write(&server_key_path, &server_key, true)?;
    let mut written = Vec::new();
    // The operator's certificate, for the Jobs commands when mutual TLS is on (the Jobs service
    // still wants an admin token: a certificate gets a peer through TLS, not into the Jobs API).
    let with_admin = clients
        .iter()
        .map(String::as_str)
        .chain((!clients.iter().any(|c| c == "admin")).then_some("admin"));
    for name in with_admin.map(str::to_string).collect::<Vec<_>>().iter() {
        check_client_name(name)?;
        let (pem, key) = leaf(
            name,
            vec![name.clone()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let (c, k) = (
            out.join(format!("{name}.pem")),
            out.join(format!("{name}.key")),
        );
        write(&c, &pem, false)?;
        write(&k, &key, true)?;
        written.push((name.clone(), c, k));
    }
    Ok(CertFiles {
        ca: out.join("ca.pem"),
        server_cert,
        server_key: server_key_path,
        clients: written,
    })
}

/// A name that is safe as a file name and a certificate name.
fn check_client_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "`{name}`: a client name here is 1 to 64 letters, digits, `-`, `_` or `.`"
        )))
    }
}

/// What [`generate_tokens`] wrote.
#[derive(Debug, Clone)]
pub struct TokenFiles {
    /// `client-tokens`: name and hash per client, for `serve --client-tokens`.
    pub client_hashes: PathBuf,
    /// `admin-tokens`: the admin's hash, for `serve --admin-tokens`.
    pub admin_hashes: PathBuf,
    /// `NAME.token` per client, and `admin.token`: the secrets themselves.
    pub tokens: Vec<(String, PathBuf)>,
}

/// A fresh random token: 32 bytes from the OS's generator, as hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Writes a token per client and one admin token (`NAME.token`, `admin.token`, owner-only), and
/// the hash files the coordinator reads (`client-tokens`, `admin-tokens`), under `out`.
pub fn generate_tokens(out: &Path, clients: &[String]) -> Result<TokenFiles> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    let mut hashes =
        String::from("# client name, SHA-256 of its token (shoal-coordinator tokens)\n");
    let mut tokens = Vec::new();
    for name in clients {
        check_client_name(name)?;
        let token = new_token();
        hashes.push_str(&format!("{name} {}\n", hash_token(&token)));
        let path = out.join(format!("{name}.token"));
        write(&path, &format!("{token}\n"), true)?;
        tokens.push((name.clone(), path));
    }
    let admin = new_token();
    let admin_path = out.join("admin.token");
    write(&admin_path, &format!("{admin}\n"), true)?;
    tokens.push(("admin".into(), admin_path));
    let (client_hashes, admin_hashes) = (out.join("client-tokens"), out.join("admin-tokens"));
    write(&client_hashes, &hashes, false)?;
    write(
        &admin_hashes,
        &format!(
            "# admin, SHA-256 of its token (shoal-coordinator tokens)\nadmin {}\n",
            hash_token(&admin)
        ),
        false,
    )?;
    Ok(TokenFiles {
        client_hashes,
        admin_hashes,
        tokens,
    })
}

/// Writes a file; a secret one is created readable by its owner only (Unix).
fn write(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::io::Write as _;
    let io = |e| Error::io(format!("cannot write {}", path.display()), e);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_client::tls::read_token_file;

    #[test]
    fn a_reloaded_set_revokes_changed_and_removed_tokens_only() {
        let h = |t: &str| hash_token(t);
        let old = TokenSet::parse(
            &format!("a {}\nb {}\nc {}\n", h("ta"), h("tb"), h("tc")),
            "old",
        )
        .unwrap();
        let new = TokenSet::parse(
            &format!("a {}\nb {}\nd {}\n", h("ta"), h("tb2"), h("td")),
            "new",
        )
        .unwrap();
        assert_eq!(old.revoked_in(&new), ["b", "c"]);
        assert!(old.revoked_in(&old).is_empty());
    }

    #[test]
    fn tokens_verify_only_for_their_own_name() {
        let text = format!(
            "# comment\n\nclient-0 {}\nclient-1 {}  # trailing comment\n",
            hash_token("secret-a"),
            hash_token("secret-b")
        );
        let set = TokenSet::parse(&text, "t").unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.verify("client-0", "secret-a"));
        assert!(
            set.verify("client-0", "secret-a\n"),
            "trailing newline of a token file"
        );
        assert!(
            !set.verify("client-1", "secret-a"),
            "another client's token"
        );
        assert!(!set.verify("client-2", "secret-a"), "an unknown name");
        assert!(!set.verify("client-0", ""), "no token");
        assert_eq!(set.find("secret-b"), Some("client-1"));
        assert_eq!(set.find("nope"), None);
        assert!(!format!("{set:?}").contains(&hash_token("secret-a")));
    }

    #[test]
    fn bad_token_files_name_file_and_line() {
        for (text, needle) in [
            ("a\n", "t:1: expected two fields"),
            ("a b c\n", "t:1: expected two fields"),
            ("a 1234\n", "t:1: the hash is not 64 hex digits"),
            ("\n# x\n", "holds no token"),
        ] {
            let e = TokenSet::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let h = hash_token("x");
        let e = TokenSet::parse(&format!("a {h}\na {h}\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t:2: `a` appears twice"), "{e}");
    }

    #[test]
    fn the_budget_quiets_a_peer_and_spares_others() {
        let b = FailureBudget::new(3);
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let other: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        assert_eq!(b.fail(ip), Failure::Logged);
        assert_eq!(b.fail(ip), Failure::Logged);
        assert_eq!(b.fail(ip), Failure::Exhausted);
        assert_eq!(b.fail(ip), Failure::Quiet);
        assert_eq!(b.fail(other), Failure::Logged);
        assert_eq!(b.fail(None), Failure::Logged);
    }

    #[test]
    fn generated_certificates_carry_the_client_name() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_certs(
            dir.path(),
            &["localhost".into(), "127.0.0.1".into()],
            &["client-0".into()],
        )
        .unwrap();
        let pem = std::fs::read_to_string(&files.clients[0].1).unwrap();
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents;
        assert_eq!(cert_name(&der).as_deref(), Some("client-0"));
        assert!(server_tls(&files.server_cert, &files.server_key, Some(&files.ca)).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.clients[0].2)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "keys are owner-only");
        }
        assert!(generate_certs(dir.path(), &["x".into()], &["../evil".into()]).is_err());
    }

    #[test]
    fn generated_tokens_match_their_hash_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_tokens(dir.path(), &["client-0".into(), "client-1".into()]).unwrap();
        let clients = TokenSet::load(&files.client_hashes).unwrap();
        let admins = TokenSet::load(&files.admin_hashes).unwrap();
        let t0 = read_token_file(&files.tokens[0].1, "t").unwrap();
        let admin = read_token_file(&files.tokens[2].1, "t").unwrap();
        assert!(clients.verify("client-0", &t0));
        assert!(!clients.verify("client-1", &t0));
        assert_eq!(admins.find(&admin), Some("admin"));
        assert_eq!(admins.find(&t0), None, "a client token is no admin token");
    }

    #[test]
    fn read_pem_refuses_what_is_not_pem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pem");
        std::fs::write(&p, "hello").unwrap();
        let e = read_pem(&p, "--tls-cert").unwrap_err().to_string();
        assert!(
            e.contains("--tls-cert") && e.contains("not a PEM file"),
            "{e}"
        );
        let e = read_pem(&dir.path().join("missing"), "--ca")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ca") && e.contains("missing"), "{e}");
    }
}
