//! What SFTP sessions may hold open: handles counted per connection, per
//! user and server-wide, and the in-flight data of a connection.
//!
//! Every handle (file or directory) holds descriptors and memory, so the
//! caps are on what a client controls, not on its SFTP channels: a client
//! may open many channels on one connection and many connections as one
//! user. [`Budgets`], one per server, hands out a [`ConnectionBudget`] at
//! login; every SFTP channel of that connection shares it. A handle takes a
//! [`HandleCharge`] from it before anything is opened, counted against the
//! connection ([`SftpConfig::max_handles`]), the user
//! ([`SftpConfig::max_handles_per_user`], over all their connections) and
//! the server (a cap the caller derives from the descriptor limit), and
//! given back when the charge is dropped.
//!
//! The in-flight budgets bound the data a connection holds between the
//! network and the store, whatever its channels and handles: see
//! [`IN_FLIGHT_KIB`] and [`CONNECTION_IN_FLIGHT_KIB`]; beyond its
//! [`OWN_IN_FLIGHT_KIB`], a channel draws on a pool shared by the whole
//! server ([`pool_kib`]), so that many sessions at once hold no more than
//! the cores can work through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::SftpConfig;

/// KiB of WRITE data (and handle-extension payloads) received and not yet
/// stored, per SFTP channel; as much again of DATA replies read and not
/// yet written. 2 MiB is what OpenSSH's client keeps in flight (64 x
/// 32 KiB) and eight of its 255 KiB requests: enough to keep the store and
/// the transport busy (docs/PERFORMANCE.md).
///
/// Requests and replies have budgets of their own: the reader of a channel
/// waits for the first, a file's worker for the second. Shared, a download
/// whose replies wait on the client's window could hold up every upload
/// (russh stops reading the whole connection while one channel's queue is
/// full, so that the window adjustment the download waits for would never
/// even be read).
pub const IN_FLIGHT_KIB: usize = 2 * 1024;

/// KiB of each kind a whole connection holds over all its channels: a
/// channel takes its share from its own budget ([`IN_FLIGHT_KIB`]) and
/// from this one, so that a channel whose client stopped reading keeps at
/// most its own share and the connection's other channels go on with the
/// rest.
pub const CONNECTION_IN_FLIGHT_KIB: usize = 4 * IN_FLIGHT_KIB;

/// KiB of each kind a channel may hold without drawing on the server's
/// pool: one of the largest requests (a WRITE near the packet limit counts
/// 258 KiB) or two of the largest replies, sixteen of OpenSSH's 32 KiB.
/// A channel always has this much, so a client that fills the pool (by
/// not reading its replies, say) slows other sessions down to it and
/// stops none.
pub const OWN_IN_FLIGHT_KIB: usize = 512;

/// KiB of each kind the server's pool holds: [`IN_FLIGHT_KIB`] beyond
/// their own share for as many channels as there are cores. Data queued
/// beyond what the cores can store or send only holds memory: with more
/// busy sessions than cores, each keeps about its own share (on 2 cores,
/// one session with 2 MiB moved 10% more than with 512 KiB; 64 sessions
/// at once moved as much either way, docs/PERFORMANCE.md).
pub fn pool_kib() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.max(2) * (IN_FLIGHT_KIB - OWN_IN_FLIGHT_KIB)
}

/// Which cap refused a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// [`SftpConfig::max_handles`], over the connection's channels.
    Connection,
    /// [`SftpConfig::max_handles_per_user`], over the user's connections.
    User,
    /// The server-wide cap ([`Budgets::new`]).
    Server,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Connection => "this connection",
            Scope::User => "this user",
            Scope::Server => "the server",
        })
    }
}

/// A count with a cap, taken and given back one at a time.
#[derive(Debug)]
struct Counter {
    used: AtomicUsize,
    max: usize,
}

impl Counter {
    fn new(max: usize) -> Self {
        Counter {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes one unless the cap is reached.
    fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }

    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The server's handle caps: one per server, shared by every connection.
#[derive(Debug)]
pub struct Budgets {
    server: Arc<Counter>,
    /// The most one user may hold, whatever `max_handles_per_user` says:
    /// half the server's handles, so one user's share never leaves the
    /// others without.
    user_share: usize,
    /// Each logged-in user's count, held by their connections: an entry
    /// goes with the user's last connection (dead entries are swept at the
    /// next login).
    users: Mutex<HashMap<String, Weak<Counter>>>,
    /// The server's pools of request and reply KiB ([`pool_kib`]).
    requests: Arc<Semaphore>,
    replies: Arc<Semaphore>,
}

impl Budgets {
    /// Budgets with at most `server_max_handles` handles open over all
    /// connections (the caller derives it from the descriptor limit: each
    /// handle holds up to two descriptors), and pools of [`pool_kib`].
    pub fn new(server_max_handles: usize) -> Self {
        Budgets::with_pool(server_max_handles, pool_kib())
    }

    /// As [`Budgets::new`], with pools of `pool_kib` KiB each.
    pub fn with_pool(server_max_handles: usize, pool_kib: usize) -> Self {
        let pool_kib = pool_kib.min(Semaphore::MAX_PERMITS);
        Budgets {
            server: Arc::new(Counter::new(server_max_handles)),
            user_share: (server_max_handles / 2).max(1),
            users: Mutex::new(HashMap::new()),
            requests: Arc::new(Semaphore::new(pool_kib)),
            replies: Arc::new(Semaphore::new(pool_kib)),
        }
    }

    /// The budget of a new connection of `user`, with the caps of `config`.
    pub fn connection(&self, user: &str, config: &SftpConfig) -> Arc<ConnectionBudget> {
        let mut users = crate::sync::lock(&self.users);
        users.retain(|_, counter| counter.strong_count() > 0);
        let user_count = match users.get(user).and_then(Weak::upgrade) {
            Some(counter) => counter,
            None => {
                let cap = config.max_handles_per_user.min(self.user_share);
                let counter = Arc::new(Counter::new(cap));
                users.insert(user.to_owned(), Arc::downgrade(&counter));
                counter
            }
        };
        Arc::new(ConnectionBudget {
            handles: Counter::new(config.max_handles),
            user: user_count,
            server: self.server.clone(),
            requests: Arc::new(Semaphore::new(CONNECTION_IN_FLIGHT_KIB)),
            replies: Arc::new(Semaphore::new(CONNECTION_IN_FLIGHT_KIB)),
            pool_requests: self.requests.clone(),
            pool_replies: self.replies.clone(),
        })
    }

    /// Handles open over the whole server.
    #[cfg(test)]
    fn server_handles(&self) -> usize {
        self.server.used()
    }

    /// Users with at least one connection (live entries).
    #[cfg(test)]
    fn users(&self) -> usize {
        let users = crate::sync::lock(&self.users);
        users.values().filter(|c| c.strong_count() > 0).count()
    }
}

impl Default for Budgets {
    /// No server-wide cap beyond the per-connection and per-user ones
    /// (tests, tools).
    fn default() -> Self {
        Budgets::with_pool(usize::MAX, usize::MAX)
    }
}

/// What one connection may hold, shared by all its SFTP channels.
#[derive(Debug)]
pub struct ConnectionBudget {
    handles: Counter,
    user: Arc<Counter>,
    server: Arc<Counter>,
    /// KiB of request data not yet stored ([`CONNECTION_IN_FLIGHT_KIB`]).
    requests: Arc<Semaphore>,
    /// KiB of DATA replies not yet written ([`CONNECTION_IN_FLIGHT_KIB`]).
    replies: Arc<Semaphore>,
    /// The server's pools ([`pool_kib`]).
    pool_requests: Arc<Semaphore>,
    pool_replies: Arc<Semaphore>,
}

impl ConnectionBudget {
    /// A budget of its own, outside any [`Budgets`] (tests, fuzzing): the
    /// user's cap counts this connection only.
    pub fn standalone(config: &SftpConfig) -> Arc<Self> {
        Budgets::default().connection("", config)
    }

    /// Takes a handle's place under the connection's, the user's and the
    /// server's caps, or says which one is reached.
    pub fn charge_handle(self: &Arc<Self>) -> Result<HandleCharge, Scope> {
        if !self.handles.take() {
            return Err(Scope::Connection);
        }
        if !self.user.take() {
            self.handles.give_back();
            return Err(Scope::User);
        }
        if !self.server.take() {
            self.user.give_back();
            self.handles.give_back();
            return Err(Scope::Server);
        }
        Ok(HandleCharge {
            budget: self.clone(),
        })
    }

    /// A new channel's in-flight budgets for request data and for reply
    /// data, each its own share under the connection's.
    pub(super) fn channel_in_flight(&self) -> (InFlight, InFlight) {
        (
            InFlight::new(&self.requests, &self.pool_requests),
            InFlight::new(&self.replies, &self.pool_replies),
        )
    }

    /// Handles this connection holds open.
    pub fn handles(&self) -> usize {
        self.handles.used()
    }

    /// Handles the connection's user holds open over all their connections.
    pub fn user_handles(&self) -> usize {
        self.user.used()
    }
}

/// One kind of in-flight data of one channel: its own [`IN_FLIGHT_KIB`]
/// under its connection's [`CONNECTION_IN_FLIGHT_KIB`]; of that, up to
/// [`OWN_IN_FLIGHT_KIB`] is the channel's own and the rest comes from the
/// server's pool.
#[derive(Debug)]
pub(super) struct InFlight {
    channel: Arc<Semaphore>,
    connection: Arc<Semaphore>,
    own: Arc<Semaphore>,
    pool: Arc<Semaphore>,
}

/// KiB taken from a channel's budget and its connection's, and from the
/// channel's own share or the server's pool; given back when dropped.
#[derive(Debug)]
pub(super) struct Share {
    _channel: OwnedSemaphorePermit,
    _connection: OwnedSemaphorePermit,
    _own_or_pool: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(connection: &Arc<Semaphore>, pool: &Arc<Semaphore>) -> Self {
        InFlight {
            channel: Arc::new(Semaphore::new(IN_FLIGHT_KIB)),
            connection: connection.clone(),
            own: Arc::new(Semaphore::new(OWN_IN_FLIGHT_KIB)),
            pool: pool.clone(),
        }
    }

    /// Waits for `kib` of the channel's and the connection's budgets (the
    /// channel's first: a channel never holds the connection's share while
    /// waiting for its own budget), then of its own share or the pool,
    /// whichever has it first; meanwhile it holds the `kib` of both
    /// budgets it has. `None` if a budget was closed.
    pub(super) async fn acquire(&self, kib: u32) -> Option<Share> {
        let channel = self.channel.clone().acquire_many_owned(kib).await.ok()?;
        let connection = self.connection.clone().acquire_many_owned(kib).await.ok()?;
        let own_or_pool = match self.try_own_or_pool(kib) {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {
                let own = self.own.clone().acquire_many_owned(kib);
                let pool = self.pool.clone().acquire_many_owned(kib);
                // A request larger than the own share waits for the pool
                // only (never the case for the requests of a packet).
                if kib as usize > OWN_IN_FLIGHT_KIB {
                    pool.await.ok()?
                } else {
                    tokio::select! {
                        p = own => p.ok()?,
                        p = pool => p.ok()?,
                    }
                }
            }
        };
        Some(Share {
            _channel: channel,
            _connection: connection,
            _own_or_pool: own_or_pool,
        })
    }

    /// `kib` of every budget it needs if each has it now.
    pub(super) fn try_acquire(&self, kib: u32) -> Result<Share, TryAcquireError> {
        let channel = self.channel.clone().try_acquire_many_owned(kib)?;
        let connection = self.connection.clone().try_acquire_many_owned(kib)?;
        Ok(Share {
            _channel: channel,
            _connection: connection,
            _own_or_pool: self.try_own_or_pool(kib)?,
        })
    }

    fn try_own_or_pool(&self, kib: u32) -> Result<OwnedSemaphorePermit, TryAcquireError> {
        match self.own.clone().try_acquire_many_owned(kib) {
            Err(TryAcquireError::NoPermits) => self.pool.clone().try_acquire_many_owned(kib),
            taken => taken,
        }
    }
}

/// One handle's place under the caps, given back when dropped.
#[derive(Debug)]
pub struct HandleCharge {
    budget: Arc<ConnectionBudget>,
}

impl Drop for HandleCharge {
    fn drop(&mut self) {
        self.budget.server.give_back();
        self.budget.user.give_back();
        self.budget.handles.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per_connection: usize, per_user: usize) -> SftpConfig {
        SftpConfig {
            max_handles: per_connection,
            max_handles_per_user: per_user,
            ..SftpConfig::default()
        }
    }

    #[test]
    fn a_connection_is_refused_at_its_cap_and_gets_the_place_back() {
        let budgets = Budgets::new(100);
        let conn = budgets.connection("alice", &config(3, 10));
        let held: Vec<_> = (0..3).map(|_| conn.charge_handle().unwrap()).collect();
        assert_eq!(conn.charge_handle().unwrap_err(), Scope::Connection);
        assert_eq!((conn.handles(), budgets.server_handles()), (3, 3));
        drop(held);
        assert_eq!((conn.handles(), conn.user_handles()), (0, 0));
        assert_eq!(budgets.server_handles(), 0);
        assert!(conn.charge_handle().is_ok());
    }

    #[test]
    fn a_users_connections_share_the_user_cap_and_other_users_do_not() {
        let budgets = Budgets::new(100);
        let (a1, a2) = (
            budgets.connection("alice", &config(4, 6)),
            budgets.connection("alice", &config(4, 6)),
        );
        let bob = budgets.connection("bob", &config(4, 6));
        let mut held: Vec<_> = (0..4).map(|_| a1.charge_handle().unwrap()).collect();
        held.extend((0..2).map(|_| a2.charge_handle().unwrap()));
        // a2 is under its own cap, alice is at hers.
        assert_eq!(a2.charge_handle().unwrap_err(), Scope::User);
        assert_eq!(a2.handles(), 2, "a refusal gives back what it took");
        assert_eq!(a1.user_handles(), 6);
        assert!(bob.charge_handle().is_ok());
        held.pop();
        assert!(a2.charge_handle().is_ok());
    }

    #[test]
    fn the_server_cap_holds_over_all_users() {
        // 5 in all: each user may hold at most 2 (half), whatever their cap.
        let budgets = Budgets::new(5);
        let alice = budgets.connection("alice", &config(10, 10));
        let bob = budgets.connection("bob", &config(10, 10));
        let carol = budgets.connection("carol", &config(10, 10));
        let _a: Vec<_> = (0..2).map(|_| alice.charge_handle().unwrap()).collect();
        assert_eq!(alice.charge_handle().unwrap_err(), Scope::User);
        let _b: Vec<_> = (0..2).map(|_| bob.charge_handle().unwrap()).collect();
        let c = carol.charge_handle().unwrap();
        assert_eq!(carol.charge_handle().unwrap_err(), Scope::Server);
        assert_eq!((carol.handles(), carol.user_handles()), (1, 1));
        drop(c);
        assert!(carol.charge_handle().is_ok());
    }

    #[test]
    fn a_users_entry_goes_with_their_last_connection() {
        let budgets = Budgets::default();
        let first = budgets.connection("alice", &config(10, 10));
        let charge = first.charge_handle().unwrap();
        let second = budgets.connection("alice", &config(10, 10));
        assert_eq!(second.user_handles(), 1, "the same count for both");
        assert_eq!(budgets.users(), 1);
        drop((first, second));
        // The charge keeps its connection, and so the user's entry.
        assert_eq!(budgets.users(), 1);
        drop(charge);
        assert_eq!(budgets.users(), 0);
        let again = budgets.connection("alice", &config(10, 10));
        assert_eq!(again.user_handles(), 0);
    }

    /// `fut`'s output, or a failure if it has not come within 10 s.
    async fn in_time<F: std::future::Future>(fut: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(10), fut)
            .await
            .expect("a waiter was not woken")
    }

    /// Whether `fut` is still waiting after being polled once.
    async fn pending<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
        tokio::select! {
            biased;
            _ = fut => false,
            () = std::future::ready(()) => true,
        }
    }

    #[tokio::test]
    async fn beyond_their_own_share_channels_draw_on_the_servers_pool() {
        let own = OWN_IN_FLIGHT_KIB as u32;
        let budgets = Budgets::with_pool(100, 1024);
        let alice = budgets.connection("alice", &SftpConfig::default());
        let bob = budgets.connection("bob", &SftpConfig::default());
        let (a, _) = alice.channel_in_flight();
        let (b, b_replies) = bob.channel_in_flight();
        // Alice takes her own share, then the whole pool.
        let a_own = a.try_acquire(own).unwrap();
        let a_pool = a.try_acquire(1024).unwrap();
        assert!(a.try_acquire(1).is_err(), "own share and pool spent");
        // Bob still has his own share, and no more.
        let b_own = b.try_acquire(own).unwrap();
        assert!(b.try_acquire(1).is_err());
        // Replies are a pool apart.
        assert!(b_replies.try_acquire(own + 256).is_ok());
        // Bob's next request waits for whichever frees first: the pool...
        let mut waiting = Box::pin(b.acquire(256));
        assert!(pending(&mut waiting).await);
        drop(a_pool);
        let from_pool = in_time(waiting).await.expect("the pool was given back");
        // ...or his own share.
        let rest_of_pool = b.try_acquire(768).expect("the pool's other 768 KiB");
        let mut waiting = Box::pin(b.acquire(256));
        assert!(pending(&mut waiting).await, "pool and own share spent");
        drop(b_own);
        assert!(
            in_time(waiting).await.is_some(),
            "Bob's own share was given back"
        );
        drop((a_own, from_pool, rest_of_pool));
    }

    #[tokio::test]
    async fn in_flight_is_bounded_per_channel_and_per_connection() {
        let budgets = Budgets::default();
        let conn = budgets.connection("alice", &SftpConfig::default());
        let other = budgets.connection("alice", &SftpConfig::default());
        let kib = IN_FLIGHT_KIB as u32;
        let channels: Vec<_> = (0..5).map(|_| conn.channel_in_flight()).collect();
        // A channel holds at most its own share...
        let first = channels[0].0.try_acquire(kib).unwrap();
        assert!(channels[0].0.try_acquire(1).is_err());
        // ...and its replies are a budget apart from its requests.
        let reply = channels[0].1.try_acquire(kib).unwrap();
        // The connection's is spent after four channels' shares.
        let held: Vec<_> = channels[1..4]
            .iter()
            .map(|(requests, _)| requests.try_acquire(kib).unwrap())
            .collect();
        assert!(channels[4].0.try_acquire(1).is_err());
        assert_eq!(conn.requests.available_permits(), 0);
        // A refusal by the connection leaves the channel's own budget whole.
        assert_eq!(channels[4].0.channel.available_permits(), IN_FLIGHT_KIB);
        // Another connection has its own.
        let (other_requests, _) = other.channel_in_flight();
        assert!(other_requests.try_acquire(kib).is_ok());
        drop(first);
        let waited = channels[4].0.acquire(kib).await;
        assert!(waited.is_some());
        drop((held, reply, waited));
        assert_eq!(conn.requests.available_permits(), CONNECTION_IN_FLIGHT_KIB);
        assert_eq!(conn.replies.available_permits(), CONNECTION_IN_FLIGHT_KIB);
    }
}
