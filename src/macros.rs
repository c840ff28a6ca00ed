//! Small macros and helpers shared by the middleware modules (as tower-http's `macros.rs`).

/// `get_ref`, `get_mut` and `into_inner` for a service wrapping another one in its `inner`
/// field: one definition for every middleware's service.
macro_rules! inner_service_accessors {
    () => {
        /// The wrapped service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The wrapped service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes the layer's service, returning the wrapped one.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

/// The ready service, leaving a clone in its place: `poll_ready` readied `inner`, so that one goes
/// with the request and the clone waits for the next `poll_ready` (the tower idiom for services
/// whose future outlives `call`).
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
