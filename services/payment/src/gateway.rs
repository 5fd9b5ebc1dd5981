//! The payment gateway boundary (DESIGN §3): the [`PaymentGateway`] trait the service calls, and
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
//! The simulated gateway reads the card token (`payment_method`, DESIGN §3a):
//!
//! | token                 | authorize                      | capture             |
//! |-----------------------|--------------------------------|---------------------|
//! | `tok_ok`              | approved                       | approved            |
//! | `tok_decline`         | declined                       | —                   |
//! | `tok_capture_decline` | approved                       | declined            |
//! | `tok_slow`            | approved, after `slow_ms`      | approved            |
//! | anything else         | unknown card token             | unknown card token  |

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

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
    /// naming `payment_method`).
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

/// Settings of the [`SimulatedGateway`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulatedGatewayConfig {
    /// Delay added to every call, milliseconds. Default 0.
    pub latency_ms: u64,
    /// How long an authorization with `tok_slow` takes to answer, milliseconds. Default 10000:
    /// longer than any step timeout, so the saga sees an unknown outcome.
    pub slow_ms: u64,
}

impl Default for SimulatedGatewayConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            slow_ms: 10_000,
        }
    }
}

/// Command-line flags and `SAGAFLOW_*` variables of the simulated gateway (DESIGN §8).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Simulated gateway: delay added to every call, milliseconds (default 0).
    #[arg(long, env = "SAGAFLOW_GATEWAY_LATENCY_MS", default_value_t = 0)]
    pub gateway_latency_ms: u64,
    /// Simulated gateway: how long an authorization with card token `tok_slow` takes to answer,
    /// milliseconds (default 10000, longer than any step timeout).
    #[arg(long, env = "SAGAFLOW_GATEWAY_SLOW_MS", default_value_t = 10_000)]
    pub gateway_slow_ms: u64,
}

impl GatewayArgs {
    /// The gateway settings these flags describe.
    pub fn config(&self) -> SimulatedGatewayConfig {
        SimulatedGatewayConfig {
            latency_ms: self.gateway_latency_ms,
            slow_ms: self.gateway_slow_ms,
        }
    }
}

/// Every card token the simulated gateway knows, as a deployment that uses it accepts them:
/// the default of `sagaflow serve order --payment-methods` and of the embedded system (PlaceOrder
/// refuses any other `payment_method` with INVALID_ARGUMENT). [`CardToken::parse`] knows exactly
/// these.
pub const SIMULATED_CARD_TOKENS: [&str; 4] =
    ["tok_ok", "tok_decline", "tok_capture_decline", "tok_slow"];

/// The card tokens the simulated gateway knows (DESIGN §3a).
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
#[derive(Debug, Clone)]
pub struct SimulatedGateway {
    config: SimulatedGatewayConfig,
    state: Arc<Mutex<SimState>>,
}

#[derive(Debug, Default)]
struct SimState {
    /// First answer per idempotency key.
    answers: HashMap<String, Result<GatewayReference, GatewayError>>,
    /// Authorizations by reference.
    authorizations: HashMap<GatewayReference, SimAuthorization>,
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
        let token = CardToken::parse(&request.card_token)
            .ok_or_else(|| GatewayError::UnknownCardToken(request.card_token.clone()))?;
        operate_locked(&mut self.lock(), operation, request, token)
    }

    fn void_by_key_now(
        &self,
        request: &VoidByKeyRequest,
    ) -> Result<Option<GatewayReference>, GatewayError> {
        let mut state = self.lock();
        let authorization = match state.answers.get(&request.authorization_key) {
            Some(Ok(reference)) => reference.clone(),
            // Declined, or already closed: nothing was authorized under the key.
            Some(Err(_)) => return Ok(None),
            None => {
                // Close the key: the authorization it was meant for will not be made.
                state.answers.insert(
                    request.authorization_key.clone(),
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
        operate_locked(&mut state, Operation::Void, &call, token).map(Some)
    }
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
        state
            .authorizations
            .entry(request.authorization.clone())
            .and_modify(|a| a.state = next)
            .or_insert_with(|| SimAuthorization {
                order_id: request.order_id.clone(),
                token,
                state: next,
            });
    }
    state
        .answers
        .insert(request.idempotency_key.clone(), answer.clone());
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
        let token = CardToken::parse(&request.card_token)
            .ok_or_else(|| GatewayError::UnknownCardToken(request.card_token.clone()))?;
        let answer = {
            let mut state = self.lock();
            match state.answers.get(&request.idempotency_key) {
                Some(answer) => answer.clone(),
                None => {
                    let answer = if token == CardToken::Decline {
                        Err(GatewayError::AuthorizationDeclined(
                            "the issuer declined the card".into(),
                        ))
                    } else {
                        let reference = new_reference("auth");
                        state.authorizations.insert(
                            reference.clone(),
                            SimAuthorization {
                                order_id: request.order_id.clone(),
                                token,
                                state: AuthorizationState::Authorized,
                            },
                        );
                        Ok(reference)
                    };
                    state
                        .answers
                        .insert(request.idempotency_key.clone(), answer.clone());
                    answer
                }
            }
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
            Err(GatewayError::UnknownCardToken("tok_nope".into()))
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
        let cli = Cli::parse_from(["x", "--gateway-latency-ms", "5", "--gateway-slow-ms", "200"]);
        assert_eq!(
            cli.gateway.config(),
            SimulatedGatewayConfig {
                latency_ms: 5,
                slow_ms: 200
            }
        );
    }
}
