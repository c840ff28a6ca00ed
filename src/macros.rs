//! Small macros shared by the middleware modules (as tower-http's `macros.rs`).

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
