//! Keys from axum extractors: [`CacheLayer::key_from`](crate::CacheLayer::key_from).

use super::{bound_length, KeyError};
use axum::extract::FromRequestParts;
use http::request::Parts;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

/// The boxed future of an extractor key (extractors are async; only these keys pay a box).
pub(crate) type KeyFuture<'a> = Pin<Box<dyn Future<Output = Result<String, KeyError>> + Send + 'a>>;

/// A key strategy over the request parts that runs asynchronously: object-safe, so the layer
/// can hold any [`ExtractKey`].
pub(crate) trait Extract: Send + Sync + 'static {
    fn extract<'a>(&'a self, parts: &'a mut Parts) -> KeyFuture<'a>;
}

/// Runs extractor `E` (with state `S`) on the request parts and builds the key from the value
/// with `f`: what the handler sees, so spellings of one value share a key.
pub(crate) struct ExtractKey<E, F, S> {
    f: F,
    state: S,
    _extractor: PhantomData<fn() -> E>,
}

impl<E, F, S> ExtractKey<E, F, S> {
    pub(crate) fn new(state: S, f: F) -> Self {
        Self {
            f,
            state,
            _extractor: PhantomData,
        }
    }
}

impl<E, F, S, K> Extract for ExtractKey<E, F, S>
where
    E: FromRequestParts<S> + 'static,
    F: Fn(E) -> K + Send + Sync + 'static,
    K: Into<Option<String>> + 'static,
    S: Send + Sync + 'static,
{
    fn extract<'a>(&'a self, parts: &'a mut Parts) -> KeyFuture<'a> {
        Box::pin(async move {
            match E::from_request_parts(parts, &self.state).await {
                Ok(value) => (self.f)(value)
                    .into()
                    .map(bound_length)
                    .ok_or(KeyError::Declined),
                // The handler runs the same extractor and answers with this rejection.
                Err(_) => Err(KeyError::Rejected(format!(
                    "key extractor `{}` rejected the request",
                    std::any::type_name::<E>()
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Path, Query};
    use futures_util::FutureExt;

    fn parts(uri: &str) -> Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    #[derive(serde::Deserialize)]
    struct Page {
        page: u32,
    }

    #[test]
    fn extractor_keys_are_built_from_the_extracted_value() {
        let k = ExtractKey::new((), |Query(p): Query<Page>| format!("page:{}", p.page));
        let run = |uri: &str| k.extract(&mut parts(uri)).now_or_never().unwrap();
        assert_eq!(run("/?page=007"), Ok("page:7".into()));
        assert_eq!(run("/?page=%2B7"), Ok("page:7".into()));
        // Duplicates, absent and unparsable values: `Query<Page>` rejects, so does the key.
        for uri in ["/?page=1&page=2", "/", "/?page=x"] {
            assert!(matches!(run(uri), Err(KeyError::Rejected(_))), "{uri}");
        }
        let declines = ExtractKey::new((), |Query(p): Query<Page>| {
            (p.page > 0).then(|| format!("page:{}", p.page))
        });
        let r = declines.extract(&mut parts("/?page=0")).now_or_never();
        assert_eq!(r, Some(Err(KeyError::Declined)));
        let long = ExtractKey::new((), |_: Query<Page>| "x".repeat(1000));
        let r = long.extract(&mut parts("/?page=1")).now_or_never().unwrap();
        assert!(r.unwrap().len() <= super::super::MAX_KEY_LEN);
    }

    /// A custom extractor over the application's state, which awaits before it answers.
    #[derive(Clone)]
    struct AppState {
        tenants: std::sync::Arc<Vec<&'static str>>,
    }

    struct CurrentTenant(String);

    impl FromRequestParts<AppState> for CurrentTenant {
        type Rejection = http::StatusCode;

        async fn from_request_parts(
            parts: &mut Parts,
            state: &AppState,
        ) -> Result<Self, Self::Rejection> {
            tokio::task::yield_now().await;
            let t = parts
                .headers
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .filter(|t| state.tenants.contains(t))
                .ok_or(http::StatusCode::UNAUTHORIZED)?;
            Ok(CurrentTenant(t.to_owned()))
        }
    }

    #[tokio::test]
    async fn custom_extractors_with_state_and_tuples() {
        let state = AppState {
            tenants: std::sync::Arc::new(vec!["acme", "a_b"]),
        };
        let k = ExtractKey::new(
            state,
            |(CurrentTenant(t), Query(p)): (CurrentTenant, Query<Page>)| {
                format!("t:{}:page:{}", super::super::escape(&t), p.page)
            },
        );
        let run = |tenant: &'static str, uri: &'static str| {
            let k = &k;
            async move {
                let mut p = http::Request::get(uri)
                    .header("x-tenant", tenant)
                    .body(())
                    .unwrap()
                    .into_parts()
                    .0;
                k.extract(&mut p).await
            }
        };
        assert_eq!(run("acme", "/?page=02").await, Ok("t:acme:page:2".into()));
        assert_eq!(run("a_b", "/?page=1").await, Ok("t:a%5Fb:page:1".into()));
        assert!(matches!(
            run("evil", "/?page=1").await,
            Err(KeyError::Rejected(_))
        ));
        assert!(matches!(
            run("acme", "/?page=x").await,
            Err(KeyError::Rejected(_))
        ));
    }

    #[test]
    fn a_path_extractor_outside_a_route_rejects() {
        let k = ExtractKey::new((), |Path(id): Path<u64>| format!("user:{id}"));
        let r = k.extract(&mut parts("/users/1")).now_or_never().unwrap();
        assert!(matches!(r, Err(KeyError::Rejected(_))), "{r:?}");
    }
}
