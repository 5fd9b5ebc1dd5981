//! Sealed card tokens at the gateway boundary (docs/architecture.md, "Card tokens"): the
//! [`OpeningGateway`] decorator opens a `sealed:v1:…` card token with the deployment's key right
//! before the gateway call it belongs to, so the clear token exists only in that call. Everything
//! the payment service stores (payments, authorization intents, idempotency rows) keeps the
//! sealed form it was given; a token that arrives in clear (a saga started before tokens were
//! sealed, or another internal caller) passes through as it is.

use std::sync::Arc;

use sagaflow_server::card_token::{self, CardTokenKey};

use crate::gateway::{
    AuthorizeRequest, GatewayError, GatewayReference, OperationRequest, PaymentGateway,
    VoidByKeyRequest,
};

/// A [`PaymentGateway`] that opens sealed card tokens before delegating to `inner`.
#[derive(Debug)]
pub struct OpeningGateway {
    key: CardTokenKey,
    inner: Arc<dyn PaymentGateway>,
}

impl OpeningGateway {
    /// `inner`, given clear card tokens opened with `key` (the order service's key).
    pub fn new(key: CardTokenKey, inner: Arc<dyn PaymentGateway>) -> Self {
        Self { key, inner }
    }

    /// The clear token of `token` for `order_id`.
    ///
    /// # Errors
    /// [`GatewayError::UnknownCardToken`] with the masked token when it is sealed but cannot be
    /// opened (another deployment's key, another order's token, altered); logged as an error,
    /// since a key mismatch between the order and payment services fails every payment.
    fn open(&self, token: &str, order_id: &str) -> Result<String, GatewayError> {
        if !card_token::is_sealed(token) {
            return Ok(token.to_owned());
        }
        self.key.open(token, order_id).map_err(|err| {
            tracing::error!(
                order_id,
                error = %err,
                "cannot open the order's sealed card token: do the order and payment services \
                 share one card-token key? (docs/operations.md, \"Secrets and card tokens\")"
            );
            GatewayError::UnknownCardToken(card_token::mask(token))
        })
    }

    fn opened(&self, request: &OperationRequest) -> Result<OperationRequest, GatewayError> {
        Ok(OperationRequest {
            card_token: self.open(&request.card_token, &request.order_id)?,
            ..request.clone()
        })
    }
}

#[tonic::async_trait]
impl PaymentGateway for OpeningGateway {
    async fn authorize(
        &self,
        request: &AuthorizeRequest,
    ) -> Result<GatewayReference, GatewayError> {
        let opened = AuthorizeRequest {
            card_token: self.open(&request.card_token, &request.order_id)?,
            ..request.clone()
        };
        self.inner.authorize(&opened).await
    }

    async fn void(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError> {
        self.inner.void(&self.opened(request)?).await
    }

    async fn void_by_key(
        &self,
        request: &VoidByKeyRequest,
    ) -> Result<Option<GatewayReference>, GatewayError> {
        self.inner.void_by_key(request).await
    }

    async fn capture(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError> {
        self.inner.capture(&self.opened(request)?).await
    }

    async fn refund(&self, request: &OperationRequest) -> Result<GatewayReference, GatewayError> {
        self.inner.refund(&self.opened(request)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{SimulatedGateway, SimulatedGatewayConfig};

    fn authorize(order: &str, token: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            idempotency_key: format!("{order}:authorize"),
            order_id: order.into(),
            amount: 1_000,
            card_token: token.into(),
        }
    }

    #[tokio::test]
    async fn opens_sealed_tokens_for_their_order_only() {
        let key = CardTokenKey::generate().unwrap();
        let gw = OpeningGateway::new(
            key.clone(),
            Arc::new(SimulatedGateway::new(SimulatedGatewayConfig::default())),
        );
        let sealed = key.seal("tok_ok", "o1").unwrap();
        assert!(gw.authorize(&authorize("o1", &sealed)).await.is_ok());
        let declined = key.seal("tok_decline", "o2").unwrap();
        assert!(matches!(
            gw.authorize(&authorize("o2", &declined)).await,
            Err(GatewayError::AuthorizationDeclined(_))
        ));
        // o1's token used for o3, and a token sealed with another key: refused, masked.
        assert_eq!(
            gw.authorize(&authorize("o3", &sealed)).await,
            Err(GatewayError::UnknownCardToken("sealed:v1:…".into()))
        );
        let foreign = CardTokenKey::generate()
            .unwrap()
            .seal("tok_ok", "o4")
            .unwrap();
        assert!(gw.authorize(&authorize("o4", &foreign)).await.is_err());
        // A clear token passes through.
        assert!(gw.authorize(&authorize("o5", "tok_ok")).await.is_ok());
    }
}
