//! The sagaflow coupon service.
