//! Who is asking and what they may do: the admin token and the users file, login sessions (an
//! HttpOnly cookie), bearer tokens, roles, the per-user connection cap and the origin check of
//! WebSocket upgrades.
//!
//! Tokens are 32 random bytes, hex-encoded. Only their SHA-256 is kept (in memory and in the
//! users file) and presented tokens are compared by hash in constant time. Session ids are
//! random too; the database keeps only their hash, so a copy of it opens no session.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{Role, SignedIn};
use crate::store::{SessionRow, Store};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "dagstream_session";
/// The user the admin token signs in as.
pub const ADMIN_NAME: &str = "admin";

/// One user of the users file. The token itself is never stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UserRecord {
    pub name: String,
    /// SHA-256 of the user's token, hex.
    pub token_sha256: String,
    pub role: Role,
    /// Groups the user is in, as gates name them (`approvers = ["group:leads"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl UserRecord {
    /// A new user with a new random token; answers the token too (shown once, kept hashed).
    pub fn new(name: &str, role: Role) -> Result<(UserRecord, String), String> {
        check_name(name)?;
        if name == ADMIN_NAME {
            return Err(format!("there is already a user called {name:?}"));
        }
        let token = new_secret();
        Ok((UserRecord { name: name.to_owned(), token_sha256: hex(&sha256(&token)), role, groups: Vec::new() }, token))
    }
}

/// The users file (`--users FILE`), TOML: `[[users]]` tables of name, token_sha256 and role.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
pub struct UsersFile {
    #[serde(default)]
    pub users: Vec<UserRecord>,
}

impl UsersFile {
    /// Reads and checks a users file; a missing file is an error (say which).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the users file: {e}", path.display()))?;
        let file: UsersFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for user in &file.users {
            check_name(&user.name).map_err(|e| format!("{}: {e}", path.display()))?;
            if parse_hash(&user.token_sha256).is_none() {
                return Err(format!(
                    "{}: user {:?}: token_sha256 must be 64 hex digits (make users with `dagstream user add`)",
                    path.display(),
                    user.name
                ));
            }
        }
        Ok(file)
    }

    /// Adds a user with a new random token, in `groups`, and returns the token (shown once,
    /// stored hashed).
    pub fn add(&mut self, name: &str, role: Role, groups: &[String]) -> Result<String, String> {
        if self.users.iter().any(|u| u.name == name) {
            return Err(format!("there is already a user called {name:?}"));
        }
        for group in groups {
            check_name(group)
                .map_err(|_| format!("group {group:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'"))?;
        }
        let (mut user, token) = UserRecord::new(name, role)?;
        user.groups = groups.to_vec();
        self.users.push(user);
        Ok(token)
    }

    /// Writes the file readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = toml::to_string(self).map_err(|e| format!("cannot write the users file: {e}"))?;
        let partial = path.with_extension("toml.partial");
        std::fs::write(&partial, text).map_err(|e| format!("{}: {e}", partial.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("{}: {e}", partial.display()))?;
        }
        std::fs::rename(&partial, path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if fine { Ok(()) } else { Err(format!("user name {name:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'")) }
}

/// A new random secret (token or session id): 32 bytes, hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// The SHA-256 of a secret, hex: how tokens and session ids are kept.
pub fn hash_secret(secret: &str) -> String {
    hex(&sha256(secret))
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How a request proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The session cookie; the session's id hash.
    Session { id_hash: String },
}

/// The user behind a request; the login middleware puts it in the request's extensions.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub credential: Credential,
    /// Cancelled when the session ends (logout); never for a bearer token. Open sockets of the
    /// session watch it and close.
    pub ended: CancellationToken,
    /// Seconds until the session expires (none for a bearer token): sockets close then too.
    pub expires_in: Option<Duration>,
}

impl Identity {
    pub fn signed_in(&self) -> SignedIn {
        SignedIn { name: self.name.clone(), role: self.role }
    }

    /// `Err` with a message fit for the user when their role is below `needed`.
    pub fn require(&self, needed: Role, to: &str) -> Result<(), String> {
        self.signed_in().require(needed, to)
    }

    /// Resolves when the session of these credentials ends, with the reason its sockets close
    /// with: at sign-out, or when it expires. Never for a bearer token.
    pub fn session_end(&self) -> impl Future<Output = &'static str> + Send + 'static {
        let ended = self.ended.clone();
        let expires_at = self.expires_in.map(|left| tokio::time::Instant::now() + left);
        async move {
            let expiry = async {
                match expires_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ended.cancelled() => "signed out",
                _ = expiry => "session expired: sign in again",
            }
        }
    }
}

/// Why a request is not let in.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("sign in first, or send Authorization: Bearer <token>")]
    Missing,
    #[error("that token is not valid")]
    BadToken,
    #[error("your session has ended: sign in again")]
    NoSession,
}

/// Settings of [`Auth`], from the command line.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// The admin token (`DAGSTREAM_TOKEN`, or random per start).
    pub admin_token: String,
    /// Users of the users file.
    pub users: Vec<UserRecord>,
    /// Origins other than the server's own whose pages may open WebSockets (exact match).
    pub allowed_origins: Vec<String>,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Open WebSocket connections one user may have at once.
    pub max_connections_per_user: usize,
}

impl AuthSettings {
    /// Settings with this admin token and the defaults (for tests and `serve`).
    pub fn with_admin_token(admin_token: impl Into<String>) -> Self {
        AuthSettings {
            admin_token: admin_token.into(),
            users: Vec::new(),
            allowed_origins: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
            max_connections_per_user: 64,
        }
    }
}

/// Someone who may sign in.
#[derive(Clone)]
struct Known {
    name: String,
    role: Role,
    hash: [u8; 32],
    /// From the users file (the database keeps no groups).
    groups: Vec<String>,
}

struct Session {
    user: String,
    /// Unix seconds.
    expires_at: u64,
    ended: CancellationToken,
}

/// Tokens, users and sessions of one server.
pub struct Auth {
    /// Who may sign in by the admin token and the users file (fixed at start).
    known: Vec<Known>,
    /// Who may sign in as kept in the database: read at start, and again when a token nobody
    /// here knows is presented (a user added meanwhile), at most once per [`USERS_REREAD`].
    from_store: RwLock<Vec<Known>>,
    /// When the database's users were last read.
    users_read: Mutex<Instant>,
    /// Live sessions by id hash.
    sessions: Mutex<HashMap<String, Session>>,
    /// Where sessions are kept across restarts (none in tests without a store).
    store: Option<Arc<dyn Store>>,
    session_ttl: Duration,
    allowed_origins: Vec<String>,
    /// Open WebSocket connections per user name, for the cap.
    connections: Mutex<HashMap<String, usize>>,
    max_connections_per_user: usize,
    /// In a cluster: told the id hash of every session that ends here, so the other instances
    /// end it too ([`Auth::forget_session`]).
    logouts: OnceLock<mpsc::UnboundedSender<String>>,
}

/// How often, at most, a token nobody knows makes the server read the database's users again.
const USERS_REREAD: Duration = Duration::from_secs(1);

/// The users kept in `store`, checked: a known role, a readable hash, and no name that `fixed`
/// (the admin and the users file) has too.
async fn store_users(store: &dyn Store, fixed: &[Known]) -> Result<Vec<Known>, String> {
    let mut users = Vec::new();
    for user in store.users().await.map_err(|e| e.to_string())? {
        let role = Role::from_name(&user.role)
            .ok_or_else(|| format!("user {:?} in the database has an unknown role {:?}", user.name, user.role))?;
        let hash = parse_hash(&user.token_sha256)
            .ok_or_else(|| format!("user {:?} in the database: bad token hash", user.name))?;
        if fixed.iter().any(|k| k.name == user.name) {
            return Err(format!("user {:?} is in the users file and in the database: keep one of them", user.name));
        }
        users.push(Known { name: user.name, role, hash, groups: Vec::new() });
    }
    Ok(users)
}

impl crate::links::Directory for Auth {
    fn who_may_decide(&self) -> Vec<String> {
        self.deciders()
    }

    fn members(&self, group: &str) -> Option<Vec<String>> {
        let members: Vec<String> =
            self.known.iter().filter(|k| k.groups.iter().any(|g| g == group)).map(|k| k.name.clone()).collect();
        (!members.is_empty()).then_some(members)
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked (plain maps, no invariants
/// across entries).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Auth {
    /// Sets up the users and loads the sessions that have not expired from the store.
    pub async fn new(settings: AuthSettings, store: Option<Arc<dyn Store>>) -> Result<Self, String> {
        if settings.admin_token.len() < 16 {
            return Err("the admin token must be at least 16 characters".into());
        }
        let mut known = vec![Known {
            name: ADMIN_NAME.into(),
            role: Role::Admin,
            hash: sha256(&settings.admin_token),
            groups: Vec::new(),
        }];
        for user in settings.users {
            let hash = parse_hash(&user.token_sha256).ok_or_else(|| format!("user {:?}: bad token hash", user.name))?;
            known.push(Known { name: user.name, role: user.role, hash, groups: user.groups });
        }
        let from_store = match &store {
            Some(store) => store_users(store.as_ref(), &known).await?,
            None => Vec::new(),
        };
        let mut sessions = HashMap::new();
        if let Some(store) = &store {
            let now = unix_now();
            for row in store.sessions().await.map_err(|e| e.to_string())? {
                let expires_at = u64::try_from(row.expires_at).unwrap_or(0);
                if expires_at > now {
                    sessions.insert(
                        row.id_hash,
                        Session { user: row.user_name, expires_at, ended: CancellationToken::new() },
                    );
                }
            }
        }
        Ok(Auth {
            known,
            from_store: RwLock::new(from_store),
            users_read: Mutex::new(Instant::now()),
            sessions: Mutex::new(sessions),
            store,
            session_ttl: settings.session_ttl,
            allowed_origins: settings.allowed_origins,
            connections: Mutex::new(HashMap::new()),
            max_connections_per_user: settings.max_connections_per_user.max(1),
            logouts: OnceLock::new(),
        })
    }

    /// The user a token belongs to. Every known hash is compared, in constant time each.
    fn by_token(&self, token: &str) -> Option<Known> {
        let presented = sha256(token);
        let from_store = self.from_store.read().unwrap_or_else(PoisonError::into_inner);
        let mut found = None;
        for known in self.known.iter().chain(from_store.iter()) {
            if bool::from(known.hash.ct_eq(&presented)) && found.is_none() {
                found = Some(known.clone());
            }
        }
        found
    }

    /// [`Auth::by_token`]; for a token nobody here knows, the database's users are read again
    /// first (a user added with `user add --database` while this server runs).
    async fn by_token_anywhere(&self, token: &str) -> Option<Known> {
        if let Some(known) = self.by_token(token) {
            return Some(known);
        }
        let store = self.store.as_ref()?;
        {
            let mut read = lock(&self.users_read);
            if read.elapsed() < USERS_REREAD {
                return None;
            }
            *read = Instant::now();
        }
        match store_users(store.as_ref(), &self.known).await {
            Ok(users) => *self.from_store.write().unwrap_or_else(PoisonError::into_inner) = users,
            Err(error) => tracing::warn!(%error, "cannot read the database's users again"),
        }
        self.by_token(token)
    }

    /// Everyone who may sign in with a role that decides gates.
    fn deciders(&self) -> Vec<String> {
        let from_store = self.from_store.read().unwrap_or_else(PoisonError::into_inner);
        self.known
            .iter()
            .chain(from_store.iter())
            .filter(|k| k.role.allows(Role::Approver))
            .map(|k| k.name.clone())
            .collect()
    }

    fn role_of(&self, name: &str) -> Option<Role> {
        let from_store = self.from_store.read().unwrap_or_else(PoisonError::into_inner);
        self.known.iter().chain(from_store.iter()).find(|k| k.name == name).map(|k| k.role)
    }

    /// Checks a token and opens a session: the session id (for the cookie) and who signed in.
    pub async fn login(&self, token: &str) -> Result<(String, SignedIn), AuthError> {
        let known = self.by_token_anywhere(token.trim()).await.ok_or(AuthError::BadToken)?;
        let signed_in = SignedIn { name: known.name.clone(), role: known.role };
        let id = new_secret();
        let id_hash = hex(&sha256(&id));
        let expires_at = unix_now() + self.session_ttl.as_secs();
        if let Some(store) = &self.store {
            let row = SessionRow {
                id_hash: id_hash.clone(),
                user_name: signed_in.name.clone(),
                expires_at: i64::try_from(expires_at).unwrap_or(i64::MAX),
            };
            if let Err(error) = store.save_session(row).await {
                // The session still works until the server restarts.
                tracing::warn!(%error, "could not store a session");
            }
        }
        lock(&self.sessions)
            .insert(id_hash, Session { user: signed_in.name.clone(), expires_at, ended: CancellationToken::new() });
        Ok((id, signed_in))
    }

    /// Ends a session: its cookie stops working and its open sockets close, here and (in a
    /// cluster) on every instance.
    pub async fn logout(&self, id_hash: &str) {
        self.forget_session(id_hash);
        if let Some(logouts) = self.logouts.get() {
            let _ = logouts.send(id_hash.to_owned());
        }
        if let Some(store) = &self.store
            && let Err(error) = store.delete_session(id_hash).await
        {
            tracing::warn!(%error, "could not delete a session");
        }
    }

    /// Who sent these headers: a bearer token first, else the session cookie.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or(AuthError::BadToken)?;
            let known = self.by_token(token.trim()).ok_or(AuthError::BadToken)?;
            return Ok(Identity {
                name: known.name.clone(),
                role: known.role,
                credential: Credential::Bearer,
                ended: CancellationToken::new(),
                expires_in: None,
            });
        }
        let id = session_cookie(headers).ok_or(AuthError::Missing)?;
        let id_hash = hex(&sha256(&id));
        let sessions = lock(&self.sessions);
        let session = sessions.get(&id_hash).ok_or(AuthError::NoSession)?;
        let now = unix_now();
        if session.expires_at <= now {
            return Err(AuthError::NoSession);
        }
        // A user removed from the users file is signed out on the next restart.
        let role = self.role_of(&session.user).ok_or(AuthError::NoSession)?;
        Ok(Identity {
            name: session.user.clone(),
            role,
            credential: Credential::Session { id_hash },
            ended: session.ended.clone(),
            expires_in: Some(Duration::from_secs(session.expires_at - now)),
        })
    }

    /// Ends a session on this server only (it ended on another instance of the cluster): its
    /// cookie stops working here and its open sockets close.
    pub fn forget_session(&self, id_hash: &str) {
        if let Some(session) = lock(&self.sessions).remove(id_hash) {
            session.ended.cancel();
        }
    }

    /// Where the id hash of each session that ends here goes (set once, by a cluster member).
    pub fn share_logouts(&self, logouts: mpsc::UnboundedSender<String>) {
        let _ = self.logouts.set(logouts);
    }

    /// [`Auth::identify`], and for a session cookie this server does not know, a look in the
    /// store: the session may have been opened by another instance of the cluster.
    pub async fn identify_anywhere(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        match self.identify(headers) {
            Err(AuthError::NoSession) => {}
            Err(AuthError::BadToken) => {
                // A bearer token of a user added to the database while this server runs.
                let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                let token = bearer.and_then(|v| v.strip_prefix("Bearer ")).ok_or(AuthError::BadToken)?;
                self.by_token_anywhere(token.trim()).await.ok_or(AuthError::BadToken)?;
                return self.identify(headers);
            }
            known => return known,
        }
        let (Some(store), Some(id)) = (&self.store, session_cookie(headers)) else {
            return Err(AuthError::NoSession);
        };
        let id_hash = hex(&sha256(&id));
        let row = match store.session(&id_hash).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err(AuthError::NoSession),
            Err(error) => {
                tracing::warn!(%error, "cannot look a session up");
                return Err(AuthError::NoSession);
            }
        };
        let expires_at = u64::try_from(row.expires_at).unwrap_or(0);
        if expires_at <= unix_now() {
            return Err(AuthError::NoSession);
        }
        lock(&self.sessions).entry(id_hash).or_insert_with(|| Session {
            user: row.user_name,
            expires_at,
            ended: CancellationToken::new(),
        });
        self.identify(headers)
    }

    /// Refuses a WebSocket upgrade from a page of another site (cross-site WebSocket hijacking):
    /// its `Origin` must be this server's own (same host as `Host`) or in `--allow-origin`.
    /// Without `Origin` (not a browser), only a bearer token is accepted.
    pub fn check_origin(&self, headers: &HeaderMap, identity: &Identity) -> Result<(), String> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return match identity.credential {
                Credential::Bearer => Ok(()),
                Credential::Session { .. } => Err("a request without Origin must carry a bearer token".into()),
            };
        };
        let origin = origin.to_str().map_err(|_| "the Origin header is not readable".to_owned())?;
        if self.allowed_origins.iter().any(|allowed| allowed == origin) {
            return Ok(());
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let origin_host = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if !host.is_empty() && origin_host == Some(host) {
            Ok(())
        } else {
            Err(format!("origin {origin} may not open this socket (see --allow-origin)"))
        }
    }

    /// Counts one more open connection of `user`; `None` when they are at the cap.
    pub fn open_connection(self: &Arc<Self>, user: &str) -> Option<ConnectionSlot> {
        let mut connections = lock(&self.connections);
        let count = connections.entry(user.to_owned()).or_insert(0);
        if *count >= self.max_connections_per_user {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot { auth: Arc::clone(self), user: user.to_owned() })
    }

    /// The `Set-Cookie` value of a new session.
    pub fn session_cookie(&self, id: &str, secure: bool) -> String {
        cookie::Cookie::build((SESSION_COOKIE, id.to_owned()))
            .path("/")
            .http_only(true)
            .secure(secure)
            .same_site(cookie::SameSite::Strict)
            .max_age(cookie::time::Duration::seconds(i64::try_from(self.session_ttl.as_secs()).unwrap_or(i64::MAX)))
            .build()
            .to_string()
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clearing_cookie() -> String {
        cookie::Cookie::build((SESSION_COOKIE, ""))
            .path("/")
            .http_only(true)
            .same_site(cookie::SameSite::Strict)
            .max_age(cookie::time::Duration::ZERO)
            .build()
            .to_string()
    }
}

/// The session id in a request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION_COOKIE)
        .map(|c| c.value().to_owned())
}

/// One open connection counted against its user's cap; dropping it frees the slot.
pub struct ConnectionSlot {
    auth: Arc<Auth>,
    user: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut connections = lock(&self.auth.connections);
        if let Some(count) = connections.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                connections.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const ADMIN: &str = "admin-token-for-unit-tests";

    async fn auth_with(users: UsersFile) -> (Auth, String) {
        let mut settings = AuthSettings::with_admin_token(ADMIN);
        let mut users = users;
        let token = users.add("vera", Role::Viewer, &[]).expect("new user");
        settings.users = users.users;
        (Auth::new(settings, None).await.expect("auth"), token)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).expect("header"));
        headers
    }

    #[tokio::test]
    async fn tokens_map_to_their_users_and_wrong_ones_to_nobody() {
        let (auth, vera) = auth_with(UsersFile::default()).await;
        let admin = auth.identify(&bearer(ADMIN)).expect("admin");
        assert_eq!((admin.name.as_str(), admin.role), (ADMIN_NAME, Role::Admin));
        let viewer = auth.identify(&bearer(&vera)).expect("viewer");
        assert_eq!((viewer.name.as_str(), viewer.role), ("vera", Role::Viewer));
        assert_eq!(auth.identify(&bearer("not-a-token")).err(), Some(AuthError::BadToken));
        assert_eq!(auth.identify(&HeaderMap::new()).err(), Some(AuthError::Missing));
    }

    #[tokio::test]
    async fn a_session_works_until_logout_and_logout_ends_its_sockets() {
        let (auth, _) = auth_with(UsersFile::default()).await;
        let (id, who) = auth.login(ADMIN).await.expect("login");
        assert_eq!(who.role, Role::Admin);
        let mut headers = HeaderMap::new();
        headers
            .insert(header::COOKIE, HeaderValue::from_str(&format!("other=1; {SESSION_COOKIE}={id}")).expect("header"));
        let identity = auth.identify(&headers).expect("session");
        let Credential::Session { id_hash } = identity.credential.clone() else { panic!("a session") };
        auth.logout(&id_hash).await;
        assert!(identity.ended.is_cancelled(), "open sockets are told");
        assert_eq!(auth.identify(&headers).err(), Some(AuthError::NoSession));
        assert_eq!(auth.login("wrong").await.err(), Some(AuthError::BadToken));
    }

    #[tokio::test]
    async fn origins_must_be_our_own_or_allowed() {
        let mut settings = AuthSettings::with_admin_token(ADMIN);
        settings.allowed_origins = vec!["https://ops.example.com".into()];
        let auth = Auth::new(settings, None).await.expect("auth");
        let (id, _) = auth.login(ADMIN).await.expect("login");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("dash.local:3000"));
        headers.insert(header::COOKIE, HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}")).expect("header"));
        let by_cookie = auth.identify(&headers).expect("session");
        assert!(auth.check_origin(&headers, &by_cookie).is_err(), "no Origin with a cookie");
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://dash.local:3000"));
        assert!(auth.check_origin(&headers, &by_cookie).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://ops.example.com"));
        assert!(auth.check_origin(&headers, &by_cookie).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(auth.check_origin(&headers, &by_cookie).is_err());
        let mut programmatic = bearer(ADMIN);
        programmatic.insert(header::HOST, HeaderValue::from_static("dash.local:3000"));
        let by_token = auth.identify(&programmatic).expect("bearer");
        assert!(auth.check_origin(&programmatic, &by_token).is_ok(), "no Origin with a bearer token");
    }

    #[tokio::test]
    async fn connections_per_user_are_capped_and_freed() {
        let mut settings = AuthSettings::with_admin_token(ADMIN);
        settings.max_connections_per_user = 2;
        let auth = Arc::new(Auth::new(settings, None).await.expect("auth"));
        let first = auth.open_connection("ana").expect("1");
        let _second = auth.open_connection("ana").expect("2");
        assert!(auth.open_connection("ana").is_none(), "the third is refused");
        assert!(auth.open_connection("bo").is_some(), "per user");
        drop(first);
        assert!(auth.open_connection("ana").is_some(), "a closed connection frees its slot");
    }

    #[test]
    fn the_users_file_stores_hashes_only_and_refuses_duplicates() {
        let mut file = UsersFile::default();
        let token = file.add("ana", Role::Approver, &[]).expect("add");
        let text = toml::to_string(&file).expect("toml");
        assert!(!text.contains(&token), "the token is not stored");
        assert!(text.contains(&hex(&sha256(&token))));
        assert!(file.add("ana", Role::Viewer, &[]).is_err());
        assert!(file.add("admin", Role::Viewer, &[]).is_err());
        assert!(file.add("no spaces", Role::Viewer, &[]).is_err());
    }
}
