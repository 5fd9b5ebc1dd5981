//! The payment gateway boundary: the [`PaymentGateway`] trait the service calls, and
//! the [`SimulatedGateway`] that stands in for a card processor, as payment sandboxes do.
//!
//! Lifecycle of one authorization at the gateway:
//!
//! ```text
//!  authorize ──▶ AUTHORIZED ──capture──▶ CAPTURED ──refund──▶ REFUNDED
//!                    │
//!                    └──void / void_by_key──▶ VOIDED
//! ```
//!
//! [`PaymentGateway::void_by_key`] releases "whatever was authorized under authorization key K":
//! the payment service uses it when it knows it asked for an authorization (its intent is in the
//! database) but not whether the gateway made one. After it, key K is closed: an authorization
//! under K is refused, so nothing can be authorized under K later either.
//!
//! Every call carries an idempotency key and the gateway is idempotent on it, like real gateways:
//! a repeat returns the first answer. The payment service derives the keys from the order id
//! (one payment per order), so every retry of a saga step reaches the same authorization.
//!
//! The simulated gateway reads the card token (`payment_method`, as in
//! `proto/sagaflow/payment/v1/payment.proto`):
//!
//! | token                 | authorize                      | capture             |
//! |-----------------------|--------------------------------|---------------------|
//! | `tok_ok`              | approved                       | approved            |
//! | `tok_decline`         | declined                       | —                   |
//! | `tok_capture_decline` | approved                       | declined            |
//! | `tok_slow`            | approved, after `slow_ms`      | approved            |
//! | anything else         | unknown card token             | unknown card token  |
//!
//! The simulated gateway's memory is bounded (docs/operations.md, "Retention"): it remembers
//! what each order's calls did (their answers and authorizations) for `retention_ms` after the
//! order's last call, and at most `max_orders` orders. Past the bound it forgets the least
//! recently used order whose authorizations are all settled (voided, captured, refunded, or none
//! at all), and only when no such order is left one with an open authorization; never the order
//! of the call being answered. A forgotten order is treated like one from before a restart (see
//! [`SimulatedGateway`]): its operations are decided by the card token, which gives every retry
//! the answer it had (a capture of a `tok_ok` authorization is approved again) under a new
//! reference.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use uuid::Uuid;

/// A gateway's reference for one operation (authorization, void, capture or refund), for
/// example `sim_auth_0190…`.
pub type GatewayReference = String;

/// An authorization request: reserve `amount` on the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// The gateway idempotency key: a repeat returns the first answer.
    pub idempotency_key: String,
    /// The order paid for (a UUID).
    pub order_id: String,
    /// KRW won, 0 or more.
    pub amount: i64,
    /// The card token (`payment_method`).
    pub card_token: String,
}

/// A void, capture or refund of an earlier authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRequest {
    /// The gateway idempotency key: a repeat returns the first answer.
    pub idempotency_key: String,
    /// The reference [`PaymentGateway::authorize`] returned.
    pub authorization: GatewayReference,
    /// The order paid for (a UUID).
    pub order_id: String,
    /// KRW won: the authorized amount.
    pub amount: i64,
    /// The card token the authorization was made with (real gateways act on the reference alone;
    /// the simulated one decides captures by the token).
    pub card_token: String,
}

/// A void of whatever authorization was made under an authorization idempotency key, if any
/// (see [`PaymentGateway::void_by_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoidByKeyRequest {
    /// The void's own idempotency key: a repeat returns the first answer, and a
    /// [`PaymentGateway::void`] with the same key is the same void.
    pub idempotency_key: String,
    /// The idempotency key the authorization was (or may have been) requested under
    /// ([`AuthorizeRequest::idempotency_key`]).
    pub authorization_key: String,
    /// The order paid for (a UUID).
    pub order_id: String,
}

/// Why a gateway call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The issuer declined the authorization (the payment service answers `PAYMENT_DECLINED`).
    #[error("authorization declined: {0}")]
    AuthorizationDeclined(String),
    /// The issuer declined the capture (`CAPTURE_DECLINED`); the authorization stays open.
    #[error("capture declined: {0}")]
    CaptureDeclined(String),
    /// The card token is not one the gateway knows (the service answers `INVALID_ARGUMENT`
    /// naming `payment_method`); it holds the token masked
    /// (`sagaflow_server::card_token::mask`).
    #[error("unknown card token {0:?}")]
    UnknownCardToken(String),
    /// The operation does not fit the authorization's state (void after capture, capture after
    /// void, refund before capture, authorize under a key closed by
    /// [`PaymentGateway::void_by_key`]): another call on the same payment is in flight or came
    /// first.
    #[error("conflicting gateway operation: {0}")]
    Conflict(String),
    /// The gateway failed or could not be reached: the outcome is unknown; retry with the same
    /// idempotency key.
    #[error("gateway fault: {0}")]
    Fault(String),
}

/// A card processor. Implementations must be idempotent on each request's `idempotency_key`.
///
/// The payment service never holds a database transaction across these calls (they may be slow).
#[tonic::async_trait]
pub trait PaymentGateway: fmt::Debug + Send + Sync + 'static {
    /// Reserves `request.amount` on the card.
    ///
    /// # Errors
    /// [`GatewayError::AuthorizationDeclined`], [`GatewayError::UnknownCardToken`],
    /// [`GatewayError::Conflict`] when [`void_by_key`](Self::void_by_key) closed the key first,
    /// [`GatewayError::Fault`].
    async fn authorize(&self, request: &AuthorizeRequest)
    -> Result<GatewayReference, GatewayError>;

    /// Releases an authorization that will not be captured.
    ///
    /// # Errors
    /// [`GatewayError::Conflict`] when it was captured; [`GatewayError::Fault`].
    async fn void(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError>;

    /// Releases whatever authorization was made under `request.authorization_key`, if any, and
    /// closes that key: a later [`authorize`](Self::authorize) under it answers
    /// [`GatewayError::Conflict`], so nothing can be authorized under it afterwards.
    ///
    /// Idempotent (a repeat gives the same answer). Returns `Ok(Some(void reference))` when an
    /// authorization existed under the key (voided now, or earlier under the same void key), and
    /// `Ok(None)` when nothing was authorized under it (never requested, or declined).
    ///
    /// # Errors
    /// [`GatewayError::Conflict`] when the authorization was captured; [`GatewayError::Fault`].
    async fn void_by_key(
        &self,
        request: &VoidByKeyRequest,
    ) -> Result<Option<GatewayReference>, GatewayError>;

    /// Takes the authorized money (the saga's pivot).
    ///
    /// # Errors
    /// [`GatewayError::CaptureDeclined`]; [`GatewayError::Conflict`] when it was voided;
    /// [`GatewayError::Fault`].
    async fn capture(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError>;

    /// Gives captured money back.
    ///
    /// # Errors
    /// [`GatewayError::Conflict`] when nothing was captured; [`GatewayError::Fault`].
    async fn refund(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError>;
}

/// Default of [`SimulatedGatewayConfig::max_orders`].
pub const DEFAULT_GATEWAY_MAX_ORDERS: usize = 50_000;
/// Default of [`SimulatedGatewayConfig::retention_ms`]: 7 days, milliseconds (the idempotency
/// window of the services, docs/operations.md, "Retention").
pub const DEFAULT_GATEWAY_RETENTION_MS: u64 = 7 * 86_400_000;

/// Settings of the [`SimulatedGateway`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulatedGatewayConfig {
    /// Delay added to every call, milliseconds. Default 0.
    pub latency_ms: u64,
    /// How long an authorization with `tok_slow` takes to answer, milliseconds. Default 10000:
    /// longer than any step timeout, so the saga sees an unknown outcome.
    pub slow_ms: u64,
    /// Most orders the gateway remembers (at least 1); beyond it the least recently used one is
    /// forgotten, settled orders first (see the module docs). Default
    /// [`DEFAULT_GATEWAY_MAX_ORDERS`] (50000; with the payment service's keys an order holds at
    /// most 4 answers and 1 authorization).
    pub max_orders: usize,
    /// An order without a call for this long is forgotten, milliseconds. Default
    /// [`DEFAULT_GATEWAY_RETENTION_MS`] (7 days).
    pub retention_ms: u64,
}

impl Default for SimulatedGatewayConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            slow_ms: 10_000,
            max_orders: DEFAULT_GATEWAY_MAX_ORDERS,
            retention_ms: DEFAULT_GATEWAY_RETENTION_MS,
        }
    }
}

/// Command-line flags and `SAGAFLOW_*` variables of the simulated gateway (its retention flags:
/// docs/operations.md, "Retention").
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Simulated gateway: delay added to every call, milliseconds (default 0).
    #[arg(long, env = "SAGAFLOW_GATEWAY_LATENCY_MS", default_value_t = 0)]
    pub gateway_latency_ms: u64,
    /// Simulated gateway: how long an authorization with card token `tok_slow` takes to answer,
    /// milliseconds (default 10000, longer than any step timeout).
    #[arg(long, env = "SAGAFLOW_GATEWAY_SLOW_MS", default_value_t = 10_000)]
    pub gateway_slow_ms: u64,
    /// Simulated gateway: most orders it remembers (their idempotency answers and
    /// authorizations); beyond it the least recently used order is forgotten, orders whose
    /// authorizations are all settled first (default 50000).
    #[arg(
        long,
        env = "SAGAFLOW_GATEWAY_MAX_ORDERS",
        default_value_t = DEFAULT_GATEWAY_MAX_ORDERS,
        value_parser = parse_max_orders
    )]
    pub gateway_max_orders: usize,
    /// Simulated gateway: an order without a call for this long is forgotten, milliseconds
    /// (default 604800000, 7 days: the services' idempotency window).
    #[arg(
        long,
        env = "SAGAFLOW_GATEWAY_RETENTION_MS",
        default_value_t = DEFAULT_GATEWAY_RETENTION_MS
    )]
    pub gateway_retention_ms: u64,
}

fn parse_max_orders(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

impl GatewayArgs {
    /// The gateway settings these flags describe.
    pub fn config(&self) -> SimulatedGatewayConfig {
        SimulatedGatewayConfig {
            latency_ms: self.gateway_latency_ms,
            slow_ms: self.gateway_slow_ms,
            max_orders: self.gateway_max_orders,
            retention_ms: self.gateway_retention_ms,
        }
    }
}

/// Every card token the simulated gateway knows, as a deployment that uses it accepts them:
/// the default of `sagaflow serve order --payment-methods` and of the embedded system (PlaceOrder
/// refuses any other `payment_method` with INVALID_ARGUMENT). [`CardToken::parse`] knows exactly
/// these.
pub const SIMULATED_CARD_TOKENS: [&str; 4] =
    ["tok_ok", "tok_decline", "tok_capture_decline", "tok_slow"];

/// The card tokens the simulated gateway knows (`proto/sagaflow/payment/v1/payment.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardToken {
    /// `tok_ok`: approves everything.
    Ok,
    /// `tok_decline`: declined at authorization.
    Decline,
    /// `tok_capture_decline`: authorized, declined at capture.
    CaptureDecline,
    /// `tok_slow`: approves, but the authorization answers after `slow_ms`.
    Slow,
}

impl CardToken {
    /// Parses a card token; `None` for an unknown one.
    pub fn parse(token: &str) -> Option<Self> {
        match token {
            "tok_ok" => Some(Self::Ok),
            "tok_decline" => Some(Self::Decline),
            "tok_capture_decline" => Some(Self::CaptureDecline),
            "tok_slow" => Some(Self::Slow),
            _ => None,
        }
    }
}

/// Where one authorization stands at the simulated gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationState {
    /// Money reserved.
    Authorized,
    /// Released without capture.
    Voided,
    /// Money taken.
    Captured,
    /// Money given back.
    Refunded,
}

/// An in-memory card processor for development and tests (see the module docs for the tokens).
///
/// Its memory is the process's: after a restart it has forgotten earlier authorizations and
/// decides void, capture and refund by the card token alone (approving them), and a void by key
/// finds nothing authorized, which keeps sagas that were interrupted by a crash able to finish.
/// It forgets an order the same way once the order is past its bounds (`max_orders`,
/// `retention_ms`; see the module docs), so its memory stays bounded however many orders it sees.
#[derive(Debug, Clone)]
pub struct SimulatedGateway {
    config: SimulatedGatewayConfig,
    state: Arc<Mutex<SimState>>,
}

/// What a [`SimulatedGateway`] holds in memory, from [`SimulatedGateway::memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayMemory {
    /// Orders remembered (at most `max_orders`).
    pub orders: usize,
    /// Idempotency answers remembered.
    pub answers: usize,
    /// Authorizations remembered.
    pub authorizations: usize,
    /// Orders forgotten so far (expired or over the bound).
    pub forgotten: u64,
}

#[derive(Debug, Default)]
struct SimState {
    /// First answer per idempotency key.
    answers: HashMap<String, Result<GatewayReference, GatewayError>>,
    /// Authorizations by reference.
    authorizations: HashMap<GatewayReference, SimAuthorization>,
    /// What each order's calls left in the two maps, by order id.
    orders: HashMap<String, OrderMemory>,
    /// Orders without an open authorization, by last use (oldest first).
    settled: BTreeMap<u64, String>,
    /// Orders with an open (AUTHORIZED) authorization, by last use (oldest first).
    open: BTreeMap<u64, String>,
    /// Counts uses: the key of the `settled` and `open` maps.
    uses: u64,
    /// Orders forgotten so far.
    forgotten: u64,
}

/// One order's share of the gateway's memory.
#[derive(Debug)]
struct OrderMemory {
    /// The idempotency keys its calls stored answers under.
    keys: Vec<String>,
    /// The authorizations made for it.
    references: Vec<GatewayReference>,
    /// Its last use (the key in `settled` or `open`).
    use_seq: u64,
    /// When it was last used.
    used_at: Instant,
    /// Whether one of its authorizations is open (it is in `open`, else in `settled`).
    open: bool,
}

impl SimState {
    /// Stores the first answer under `key`, for `order_id`.
    fn store_answer(
        &mut self,
        order_id: &str,
        key: &str,
        answer: Result<GatewayReference, GatewayError>,
    ) {
        if self.answers.insert(key.to_owned(), answer).is_none() {
            self.order(order_id).keys.push(key.to_owned());
        }
    }

    /// Stores a new authorization for `order_id`.
    fn store_authorization(
        &mut self,
        reference: GatewayReference,
        authorization: SimAuthorization,
    ) {
        let order_id = authorization.order_id.clone();
        if self
            .authorizations
            .insert(reference.clone(), authorization)
            .is_none()
        {
            self.order(&order_id).references.push(reference);
        }
    }

    /// The memory of `order_id`, created unused (it is filed by [`Self::use_order`]).
    fn order(&mut self, order_id: &str) -> &mut OrderMemory {
        self.orders
            .entry(order_id.to_owned())
            .or_insert_with(|| OrderMemory {
                keys: Vec::new(),
                references: Vec::new(),
                use_seq: 0,
                used_at: Instant::now(),
                open: false,
            })
    }

    /// Marks `order_id` used at `now` (if the gateway remembers anything of it) and files it as
    /// settled or open.
    fn use_order(&mut self, order_id: &str, now: Instant) {
        let Some(memory) = self.orders.get(order_id) else {
            return;
        };
        let (old_seq, was_open) = (memory.use_seq, memory.open);
        let open = memory.references.iter().any(|r| {
            self.authorizations
                .get(r)
                .is_some_and(|a| a.state == AuthorizationState::Authorized)
        });
        if old_seq > 0 {
            let queue = if was_open {
                &mut self.open
            } else {
                &mut self.settled
            };
            queue.remove(&old_seq);
        }
        self.uses += 1;
        let seq = self.uses;
        if open {
            self.open.insert(seq, order_id.to_owned());
        } else {
            self.settled.insert(seq, order_id.to_owned());
        }
        if let Some(memory) = self.orders.get_mut(order_id) {
            memory.use_seq = seq;
            memory.used_at = now;
            memory.open = open;
        }
    }

    /// Forgets `order_id`: its answers, its authorizations and its place in the queues.
    fn forget(&mut self, order_id: &str) {
        let Some(memory) = self.orders.remove(order_id) else {
            return;
        };
        for key in &memory.keys {
            self.answers.remove(key);
        }
        for reference in &memory.references {
            self.authorizations.remove(reference);
        }
        let queue = if memory.open {
            &mut self.open
        } else {
            &mut self.settled
        };
        queue.remove(&memory.use_seq);
        self.forgotten += 1;
    }

    /// Keeps the bounds of `config` at `now`: forgets orders unused for `retention_ms`, then,
    /// while more than `max_orders` are remembered, the least recently used settled order, or
    /// when none is left the least recently used open one. Never `current`, the order of the
    /// call being answered.
    fn keep_bounds(&mut self, config: &SimulatedGatewayConfig, now: Instant, current: &str) {
        let retention = Duration::from_millis(config.retention_ms);
        for open in [false, true] {
            loop {
                let queue = if open {
                    &mut self.open
                } else {
                    &mut self.settled
                };
                let Some((&seq, oldest)) = queue.first_key_value() else {
                    break;
                };
                let Some(memory) = self.orders.get(oldest) else {
                    // Never left behind by `forget`; dropped all the same.
                    queue.remove(&seq);
                    continue;
                };
                let expired = now.saturating_duration_since(memory.used_at) >= retention;
                if !expired || oldest == current {
                    break;
                }
                let oldest = oldest.clone();
                self.forget(&oldest);
            }
        }
        while self.orders.len() > config.max_orders.max(1) {
            let victim = self
                .settled
                .iter()
                .map(|(&seq, order)| (false, seq, order))
                .chain(self.open.iter().map(|(&seq, order)| (true, seq, order)))
                .find(|(_, _, order)| order.as_str() != current)
                .map(|(open, seq, order)| (open, seq, order.clone()));
            let Some((open, seq, victim)) = victim else {
                break;
            };
            if !self.orders.contains_key(&victim) {
                // Never left behind by `forget`; dropped all the same.
                if open {
                    self.open.remove(&seq);
                } else {
                    self.settled.remove(&seq);
                }
                continue;
            }
            if open {
                tracing::warn!(
                    order_id = %victim,
                    max_orders = config.max_orders,
                    "simulated gateway: forgetting an order with an open authorization (over --gateway-max-orders)"
                );
            }
            self.forget(&victim);
        }
    }

    /// After a call for `order_id` (and the authorization's own order, when another): marks
    /// them used and keeps the bounds.
    fn after_call(
        &mut self,
        config: &SimulatedGatewayConfig,
        order_id: &str,
        authorization_order: Option<&str>,
    ) {
        let now = Instant::now();
        if let Some(other) = authorization_order.filter(|o| *o != order_id) {
            self.use_order(other, now);
        }
        self.use_order(order_id, now);
        self.keep_bounds(config, now, order_id);
    }
}

#[derive(Debug, Clone)]
struct SimAuthorization {
    order_id: String,
    token: CardToken,
    state: AuthorizationState,
}

#[derive(Debug, Clone, Copy)]
enum Operation {
    Void,
    Capture,
    Refund,
}

impl SimulatedGateway {
    /// A gateway with these settings and no history.
    pub fn new(config: SimulatedGatewayConfig) -> Self {
        Self {
            config,
            state: Arc::new(Mutex::new(SimState::default())),
        }
    }

    /// The gateway's settings.
    pub fn config(&self) -> SimulatedGatewayConfig {
        self.config
    }

    /// What the gateway holds in memory now, for tests and diagnostics.
    pub fn memory(&self) -> GatewayMemory {
        let state = self.lock();
        GatewayMemory {
            orders: state.orders.len(),
            answers: state.answers.len(),
            authorizations: state.authorizations.len(),
            forgotten: state.forgotten,
        }
    }

    /// The state of every authorization made for `order_id`, for tests and diagnostics.
    pub fn authorizations_of(&self, order_id: &str) -> Vec<AuthorizationState> {
        self.lock()
            .authorizations
            .values()
            .filter(|a| a.order_id == order_id)
            .map(|a| a.state)
            .collect()
    }

    /// The state of the authorization made under the authorization idempotency key
    /// `authorization_key`, or `None` when nothing was authorized under it (never asked, declined,
    /// or closed by [`PaymentGateway::void_by_key`] first), for tests and diagnostics.
    pub fn authorization_under_key(&self, authorization_key: &str) -> Option<AuthorizationState> {
        let state = self.lock();
        match state.answers.get(authorization_key) {
            Some(Ok(reference)) => state.authorizations.get(reference).map(|a| a.state),
            Some(Err(_)) | None => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        // A panic while holding the lock cannot leave the maps half-updated (each update is one
        // insert), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn latency(&self) {
        if self.config.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.config.latency_ms)).await;
        }
    }

    fn operate(
        &self,
        operation: Operation,
        request: &OperationRequest,
    ) -> Result<GatewayReference, GatewayError> {
        let token = CardToken::parse(&request.card_token).ok_or_else(|| {
            GatewayError::UnknownCardToken(sagaflow_server::card_token::mask(&request.card_token))
        })?;
        let mut state = self.lock();
        let answer = operate_locked(&mut state, operation, request, token);
        let authorization_order = state
            .authorizations
            .get(&request.authorization)
            .map(|a| a.order_id.clone());
        state.after_call(
            &self.config,
            &request.order_id,
            authorization_order.as_deref(),
        );
        answer
    }

    fn void_by_key_now(
        &self,
        request: &VoidByKeyRequest,
    ) -> Result<Option<GatewayReference>, GatewayError> {
        let mut state = self.lock();
        let answer = void_by_key_locked(&mut state, request);
        state.after_call(&self.config, &request.order_id, None);
        answer
    }
}

/// A void by key with the state locked (see [`PaymentGateway::void_by_key`]).
fn void_by_key_locked(
    state: &mut SimState,
    request: &VoidByKeyRequest,
) -> Result<Option<GatewayReference>, GatewayError> {
    let authorization = match state.answers.get(&request.authorization_key) {
        Some(Ok(reference)) => reference.clone(),
        // Declined, or already closed: nothing was authorized under the key.
        Some(Err(_)) => return Ok(None),
        None => {
            // Close the key: the authorization it was meant for will not be made.
            state.store_answer(
                &request.order_id,
                &request.authorization_key,
                Err(GatewayError::Conflict(format!(
                    "authorization key {:?} was voided before anything was authorized",
                    request.authorization_key
                ))),
            );
            return Ok(None);
        }
    };
    // The answer and the authorization are stored together; the fallback token is never used
    // for a void (only captures read it).
    let token = state
        .authorizations
        .get(&authorization)
        .map_or(CardToken::Ok, |a| a.token);
    let call = OperationRequest {
        idempotency_key: request.idempotency_key.clone(),
        authorization,
        order_id: request.order_id.clone(),
        amount: 0,
        card_token: String::new(),
    };
    operate_locked(state, Operation::Void, &call, token).map(Some)
}

/// One void, capture or refund with the state locked (`token` is the request's card token).
fn operate_locked(
    state: &mut SimState,
    operation: Operation,
    request: &OperationRequest,
    token: CardToken,
) -> Result<GatewayReference, GatewayError> {
    if let Some(answer) = state.answers.get(&request.idempotency_key) {
        return answer.clone();
    }
    let current = state
        .authorizations
        .get(&request.authorization)
        .map(|a| a.state);
    use AuthorizationState as S;
    let (answer, next) = match (operation, current) {
        (Operation::Void, Some(S::Captured | S::Refunded)) => (
            Err(GatewayError::Conflict(
                "cannot void a captured authorization".into(),
            )),
            None,
        ),
        (Operation::Void, _) => (Ok(new_reference("void")), Some(S::Voided)),
        (Operation::Capture, Some(S::Voided)) => (
            Err(GatewayError::Conflict(
                "cannot capture a voided authorization".into(),
            )),
            None,
        ),
        (Operation::Capture, Some(S::Refunded)) => (
            Err(GatewayError::Conflict(
                "cannot capture a refunded authorization".into(),
            )),
            None,
        ),
        (Operation::Capture, _) if token == CardToken::CaptureDecline => (
            Err(GatewayError::CaptureDeclined(
                "the issuer declined the capture".into(),
            )),
            None,
        ),
        (Operation::Capture, _) => (Ok(new_reference("cap")), Some(S::Captured)),
        (Operation::Refund, Some(S::Authorized | S::Voided)) => (
            Err(GatewayError::Conflict(
                "cannot refund an authorization that was not captured".into(),
            )),
            None,
        ),
        (Operation::Refund, _) => (Ok(new_reference("ref")), Some(S::Refunded)),
    };
    if let Some(next) = next {
        match state.authorizations.get_mut(&request.authorization) {
            Some(authorization) => authorization.state = next,
            // Forgotten (a restart, or past the bounds) or never known: decided by the token.
            None => state.store_authorization(
                request.authorization.clone(),
                SimAuthorization {
                    order_id: request.order_id.clone(),
                    token,
                    state: next,
                },
            ),
        }
    }
    state.store_answer(&request.order_id, &request.idempotency_key, answer.clone());
    answer
}

fn new_reference(kind: &str) -> GatewayReference {
    format!("sim_{kind}_{}", Uuid::now_v7().simple())
}

#[tonic::async_trait]
impl PaymentGateway for SimulatedGateway {
    /// Decides at once (the gateway has the request) and, for `tok_slow`, answers after
    /// `slow_ms`: a caller that gave up earlier leaves an authorization it does not know about.
    async fn authorize(
        &self,
        request: &AuthorizeRequest,
    ) -> Result<GatewayReference, GatewayError> {
        self.latency().await;
        let token = CardToken::parse(&request.card_token).ok_or_else(|| {
            GatewayError::UnknownCardToken(sagaflow_server::card_token::mask(&request.card_token))
        })?;
        let answer = {
            let mut state = self.lock();
            let answer = match state.answers.get(&request.idempotency_key) {
                Some(answer) => answer.clone(),
                None => {
                    let answer = if token == CardToken::Decline {
                        Err(GatewayError::AuthorizationDeclined(
                            "the issuer declined the card".into(),
                        ))
                    } else {
                        let reference = new_reference("auth");
                        state.store_authorization(
                            reference.clone(),
                            SimAuthorization {
                                order_id: request.order_id.clone(),
                                token,
                                state: AuthorizationState::Authorized,
                            },
                        );
                        Ok(reference)
                    };
                    state.store_answer(&request.order_id, &request.idempotency_key, answer.clone());
                    answer
                }
            };
            state.after_call(&self.config, &request.order_id, None);
            answer
        };
        if token == CardToken::Slow {
            tokio::time::sleep(Duration::from_millis(self.config.slow_ms)).await;
        }
        answer
    }

    async fn void(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError> {
        self.latency().await;
        self.operate(Operation::Void, request)
    }

    /// Decides under the same lock as [`authorize`](Self::authorize), so a void by key and an
    /// authorization under the same key are one before the other.
    async fn void_by_key(
        &self,
        request: &VoidByKeyRequest,
    ) -> Result<Option<GatewayReference>, GatewayError> {
        self.latency().await;
        self.void_by_key_now(request)
    }

    async fn capture(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError> {
        self.latency().await;
        self.operate(Operation::Capture, request)
    }

    async fn refund(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError> {
        self.latency().await;
        self.operate(Operation::Refund, request)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn authorize(key: &str, token: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            idempotency_key: key.into(),
            order_id: "o1".into(),
            amount: 1000,
            card_token: token.into(),
        }
    }

    fn operation(key: &str, authorization: &str, token: &str) -> OperationRequest {
        OperationRequest {
            idempotency_key: key.into(),
            authorization: authorization.into(),
            order_id: "o1".into(),
            amount: 1000,
            card_token: token.into(),
        }
    }

    fn gateway() -> SimulatedGateway {
        SimulatedGateway::new(SimulatedGatewayConfig {
            latency_ms: 0,
            slow_ms: 50,
            ..SimulatedGatewayConfig::default()
        })
    }

    #[test]
    fn the_published_tokens_are_exactly_the_known_ones() {
        let parsed: Vec<_> = SIMULATED_CARD_TOKENS
            .iter()
            .map(|t| CardToken::parse(t))
            .collect();
        assert_eq!(
            parsed,
            [
                Some(CardToken::Ok),
                Some(CardToken::Decline),
                Some(CardToken::CaptureDecline),
                Some(CardToken::Slow)
            ]
        );
        for unknown in ["tok_bogus", "", "TOK_OK", "tok_ok "] {
            assert_eq!(CardToken::parse(unknown), None, "{unknown:?}");
        }
    }

    #[tokio::test]
    async fn tokens_decide_authorization() {
        let gw = gateway();
        assert!(gw.authorize(&authorize("a", "tok_ok")).await.is_ok());
        assert_eq!(
            gw.authorize(&authorize("b", "tok_decline")).await,
            Err(GatewayError::AuthorizationDeclined(
                "the issuer declined the card".into()
            ))
        );
        assert!(
            gw.authorize(&authorize("c", "tok_capture_decline"))
                .await
                .is_ok()
        );
        assert_eq!(
            gw.authorize(&authorize("d", "tok_nope")).await,
            Err(GatewayError::UnknownCardToken("tok_…".into()))
        );
    }

    #[tokio::test]
    async fn idempotent_on_the_key() {
        let gw = gateway();
        let first = gw.authorize(&authorize("k", "tok_ok")).await.unwrap();
        let again = gw.authorize(&authorize("k", "tok_ok")).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(gw.authorizations_of("o1").len(), 1);
        let void = gw.void(&operation("v", &first, "tok_ok")).await.unwrap();
        assert_eq!(gw.void(&operation("v", &first, "tok_ok")).await, Ok(void));
    }

    #[tokio::test]
    async fn capture_decline_and_state_conflicts() {
        let gw = gateway();
        let auth = gw
            .authorize(&authorize("a", "tok_capture_decline"))
            .await
            .unwrap();
        assert!(matches!(
            gw.capture(&operation("c", &auth, "tok_capture_decline"))
                .await,
            Err(GatewayError::CaptureDeclined(_))
        ));
        // The authorization is still open: it can be voided, then not captured.
        gw.void(&operation("v", &auth, "tok_capture_decline"))
            .await
            .unwrap();
        assert_eq!(gw.authorizations_of("o1"), vec![AuthorizationState::Voided]);

        let auth = gw.authorize(&authorize("a2", "tok_ok")).await.unwrap();
        assert!(matches!(
            gw.refund(&operation("r0", &auth, "tok_ok")).await,
            Err(GatewayError::Conflict(_))
        ));
        gw.capture(&operation("c2", &auth, "tok_ok")).await.unwrap();
        assert!(matches!(
            gw.void(&operation("v2", &auth, "tok_ok")).await,
            Err(GatewayError::Conflict(_))
        ));
        gw.refund(&operation("r2", &auth, "tok_ok")).await.unwrap();
    }

    #[tokio::test]
    async fn forgotten_authorizations_are_decided_by_token() {
        let gw = gateway();
        assert!(
            gw.capture(&operation("c", "sim_auth_unknown", "tok_ok"))
                .await
                .is_ok()
        );
        assert!(matches!(
            gw.capture(&operation("c2", "sim_auth_unknown2", "tok_capture_decline"))
                .await,
            Err(GatewayError::CaptureDeclined(_))
        ));
    }

    fn void_by_key(key: &str, authorization_key: &str) -> VoidByKeyRequest {
        VoidByKeyRequest {
            idempotency_key: key.into(),
            authorization_key: authorization_key.into(),
            order_id: "o1".into(),
        }
    }

    #[tokio::test]
    async fn void_by_key_releases_what_the_key_authorized() {
        let gw = gateway();
        let auth = gw.authorize(&authorize("a", "tok_ok")).await.unwrap();
        assert_eq!(
            gw.authorization_under_key("a"),
            Some(AuthorizationState::Authorized)
        );
        let void = gw.void_by_key(&void_by_key("v", "a")).await.unwrap();
        assert!(void.is_some());
        assert_eq!(gw.authorizations_of("o1"), vec![AuthorizationState::Voided]);
        assert_eq!(
            gw.authorization_under_key("a"),
            Some(AuthorizationState::Voided)
        );
        // Idempotent, and the same void as a `void` with the same key.
        assert_eq!(gw.void_by_key(&void_by_key("v", "a")).await.unwrap(), void);
        assert_eq!(gw.void(&operation("v", &auth, "tok_ok")).await.ok(), void);
        // A repeat of the authorization replays it; it is not reopened.
        assert_eq!(gw.authorize(&authorize("a", "tok_ok")).await, Ok(auth));
        assert_eq!(gw.authorizations_of("o1"), vec![AuthorizationState::Voided]);
    }

    #[tokio::test]
    async fn void_by_key_before_authorize_closes_the_key() {
        let gw = gateway();
        assert_eq!(gw.void_by_key(&void_by_key("v", "a")).await, Ok(None));
        assert_eq!(gw.void_by_key(&void_by_key("v", "a")).await, Ok(None));
        assert!(matches!(
            gw.authorize(&authorize("a", "tok_ok")).await,
            Err(GatewayError::Conflict(_))
        ));
        assert!(gw.authorizations_of("o1").is_empty());
        assert_eq!(gw.authorization_under_key("a"), None);
        // A declined key has nothing to void either.
        assert!(gw.authorize(&authorize("d", "tok_decline")).await.is_err());
        assert_eq!(gw.void_by_key(&void_by_key("v2", "d")).await, Ok(None));
    }

    #[tokio::test]
    async fn void_by_key_of_a_captured_authorization_conflicts() {
        let gw = gateway();
        let auth = gw.authorize(&authorize("a", "tok_ok")).await.unwrap();
        gw.capture(&operation("c", &auth, "tok_ok")).await.unwrap();
        assert!(matches!(
            gw.void_by_key(&void_by_key("v", "a")).await,
            Err(GatewayError::Conflict(_))
        ));
        assert_eq!(
            gw.authorizations_of("o1"),
            vec![AuthorizationState::Captured]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_token_answers_after_slow_ms_but_decides_at_once() {
        let gw = SimulatedGateway::new(SimulatedGatewayConfig {
            latency_ms: 0,
            slow_ms: 10_000,
            ..SimulatedGatewayConfig::default()
        });
        let call = {
            let gw = gw.clone();
            tokio::spawn(async move { gw.authorize(&authorize("s", "tok_slow")).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            gw.authorizations_of("o1"),
            vec![AuthorizationState::Authorized]
        );
        assert!(!call.is_finished());
        tokio::time::sleep(Duration::from_millis(10_000)).await;
        assert!(call.await.unwrap().is_ok());
    }

    fn bounded(max_orders: usize, retention_ms: u64) -> SimulatedGateway {
        SimulatedGateway::new(SimulatedGatewayConfig {
            max_orders,
            retention_ms,
            ..SimulatedGatewayConfig::default()
        })
    }

    fn order_authorize(order: &str, token: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            idempotency_key: format!("payment:{order}:authorize"),
            order_id: order.into(),
            amount: 1000,
            card_token: token.into(),
        }
    }

    fn order_capture(order: &str, authorization: &str, token: &str) -> OperationRequest {
        OperationRequest {
            idempotency_key: format!("payment:{order}:capture"),
            authorization: authorization.into(),
            order_id: order.into(),
            amount: 1000,
            card_token: token.into(),
        }
    }

    /// docs/operations.md, "Retention": 10,000 orders through a gateway bounded to 1,000; every
    /// 20th order's capture is declined, so its authorization stays open (its saga could still
    /// retry it). The maps never exceed the bound, the open authorizations are all kept, and the
    /// recent orders still replay their answers.
    #[tokio::test]
    async fn memory_stays_bounded_over_10_000_orders() {
        const BOUND: usize = 1_000;
        let gw = bounded(BOUND, DEFAULT_GATEWAY_RETENTION_MS);
        let mut last = None;
        for i in 0..10_000 {
            let order = format!("order-{i:05}");
            let token = match i {
                i if i % 20 == 0 => "tok_capture_decline",
                i if i % 7 == 0 => "tok_decline",
                _ => "tok_ok",
            };
            let auth = gw.authorize(&order_authorize(&order, token)).await;
            if let Ok(auth) = &auth {
                let capture = gw.capture(&order_capture(&order, auth, token)).await;
                last = Some((order.clone(), auth.clone(), capture));
            }
            let memory = gw.memory();
            assert!(memory.orders <= BOUND, "{i}: {memory:?}");
            assert!(memory.authorizations <= BOUND, "{i}: {memory:?}");
            assert!(memory.answers <= 2 * BOUND, "{i}: {memory:?}");
        }
        let memory = gw.memory();
        assert_eq!(memory.orders, BOUND);
        assert_eq!(memory.forgotten, 10_000 - BOUND as u64);
        // Every open authorization (500 of them) was kept, and replays its declined capture.
        for i in (0..10_000).step_by(20) {
            let order = format!("order-{i:05}");
            assert_eq!(
                gw.authorization_under_key(&format!("payment:{order}:authorize")),
                Some(AuthorizationState::Authorized),
                "{order}"
            );
        }
        let first = "order-00000";
        let auth = gw
            .authorize(&order_authorize(first, "tok_capture_decline"))
            .await
            .unwrap();
        assert!(matches!(
            gw.capture(&order_capture(first, &auth, "tok_capture_decline"))
                .await,
            Err(GatewayError::CaptureDeclined(_))
        ));
        // The most recent order replays its answers (same references).
        let (order, auth, capture) = last.unwrap();
        assert_eq!(
            gw.authorize(&order_authorize(&order, "tok_ok")).await,
            Ok(auth.clone())
        );
        assert_eq!(
            gw.capture(&order_capture(&order, &auth, "tok_ok")).await,
            capture
        );
        // The oldest settled orders were forgotten: decided by the token again.
        assert_eq!(
            gw.authorization_under_key("payment:order-00001:authorize"),
            None
        );
        assert_eq!(gw.memory().orders, BOUND);
    }

    #[tokio::test(start_paused = true)]
    async fn orders_unused_for_retention_ms_are_forgotten() {
        let gw = bounded(100, 1_000);
        let a = gw.authorize(&order_authorize("a", "tok_ok")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let b = gw.authorize(&order_authorize("b", "tok_ok")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A call (any order's) forgets "a", unused for 1100 ms; "b" (500 ms) stays.
        gw.authorize(&order_authorize("c", "tok_decline"))
            .await
            .unwrap_err();
        assert_eq!(gw.authorization_under_key("payment:a:authorize"), None);
        assert_eq!(
            gw.authorization_under_key("payment:b:authorize"),
            Some(AuthorizationState::Authorized)
        );
        assert_eq!(gw.memory().orders, 2);
        // A use keeps an order: "b" used now lives another 1000 ms.
        gw.capture(&order_capture("b", &b, "tok_ok")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(900)).await;
        gw.authorize(&order_authorize("d", "tok_decline"))
            .await
            .unwrap_err();
        assert_eq!(
            gw.authorization_under_key("payment:b:authorize"),
            Some(AuthorizationState::Captured)
        );
        // The forgotten "a" is decided by its token, like after a restart.
        assert!(gw.capture(&order_capture("a", &a, "tok_ok")).await.is_ok());
    }

    #[tokio::test]
    async fn open_authorizations_and_the_current_order_are_kept_over_the_bound() {
        let gw = bounded(2, DEFAULT_GATEWAY_RETENTION_MS);
        gw.authorize(&order_authorize("a", "tok_ok")).await.unwrap();
        gw.authorize(&order_authorize("b", "tok_ok")).await.unwrap();
        // "c" is settled (declined) and the only settled order, but it is the one being
        // answered: the oldest open order goes instead.
        gw.authorize(&order_authorize("c", "tok_decline"))
            .await
            .unwrap_err();
        assert_eq!(gw.authorization_under_key("payment:a:authorize"), None);
        assert_eq!(
            gw.authorization_under_key("payment:b:authorize"),
            Some(AuthorizationState::Authorized)
        );
        assert!(matches!(
            gw.authorize(&order_authorize("c", "tok_decline")).await,
            Err(GatewayError::AuthorizationDeclined(_))
        ));
        // "d" comes: the settled "c" goes before the open "b".
        gw.authorize(&order_authorize("d", "tok_ok")).await.unwrap();
        assert_eq!(
            gw.authorization_under_key("payment:b:authorize"),
            Some(AuthorizationState::Authorized)
        );
        assert_eq!(
            gw.memory(),
            GatewayMemory {
                orders: 2,
                answers: 2,
                authorizations: 2,
                forgotten: 2,
            }
        );
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        gateway: GatewayArgs,
    }

    #[test]
    fn flags_and_defaults() {
        let cli = Cli::parse_from(["x"]);
        assert_eq!(cli.gateway.config(), SimulatedGatewayConfig::default());
        assert_eq!(SimulatedGatewayConfig::default().slow_ms, 10_000);
        let cli = Cli::parse_from([
            "x",
            "--gateway-latency-ms",
            "5",
            "--gateway-slow-ms",
            "200",
            "--gateway-max-orders",
            "10",
            "--gateway-retention-ms",
            "1000",
        ]);
        assert_eq!(
            cli.gateway.config(),
            SimulatedGatewayConfig {
                latency_ms: 5,
                slow_ms: 200,
                max_orders: 10,
                retention_ms: 1_000,
            }
        );
        assert!(Cli::try_parse_from(["x", "--gateway-max-orders", "0"]).is_err());
    }
}
