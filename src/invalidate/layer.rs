use super::service::{InvalidateService, Plan};
use crate::key::KeyTemplate;
use crate::Cache;
use http::StatusCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tower_layer::Layer;

/// Invalidates cache entries after successful writes. See the [module docs](crate::invalidate).
#[derive(Clone)]
pub struct InvalidateLayer {
    cache: Cache,
    keys: Vec<KeyTemplate>,
    patterns: Vec<KeyTemplate>,
    tags: Vec<KeyTemplate>,
    when: Arc<dyn Fn(StatusCode) -> bool + Send + Sync>,
}

impl std::fmt::Debug for InvalidateLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvalidateLayer")
            .field("namespace", &self.cache.namespace())
            .field("keys", &self.keys)
            .field("patterns", &self.patterns)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

fn parse_all<I, T>(templates: I) -> Vec<KeyTemplate>
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    templates
        .into_iter()
        .map(|t| KeyTemplate::parse(t.as_ref()).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

impl InvalidateLayer {
    /// A layer that invalidates nothing until told what (`keys`, `patterns`, `tags`).
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            keys: Vec::new(),
            patterns: Vec::new(),
            tags: Vec::new(),
            when: Arc::new(|s: StatusCode| s.is_success()),
        }
    }

    /// Exact keys to remove, as templates (`"user:{id}"`).
    ///
    /// # Panics
    ///
    /// If a template does not parse.
    pub fn keys<I, T>(mut self, templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.keys.extend(parse_all(templates));
        self
    }

    /// Glob patterns to remove (`"user_{id}_*"`). Substituted values are escaped, so a path
    /// parameter of `*` matches only a literal `*`.
    ///
    /// # Panics
    ///
    /// If a template does not parse.
    pub fn patterns<I, T>(mut self, templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.patterns.extend(parse_all(templates));
        self
    }

    /// Tags whose entries to remove (`"user:{id}"`).
    ///
    /// # Panics
    ///
    /// If a template does not parse.
    pub fn tags<I, T>(mut self, templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.tags.extend(parse_all(templates));
        self
    }

    /// Which response statuses trigger the invalidation. Default: 2xx.
    pub fn when(mut self, predicate: impl Fn(StatusCode) -> bool + Send + Sync + 'static) -> Self {
        self.when = Arc::new(predicate);
        self
    }
}

impl<S> Layer<S> for InvalidateLayer {
    type Service = InvalidateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InvalidateService::new(
            inner,
            Arc::new(Plan {
                cache: self.cache.clone(),
                keys: self.keys.clone(),
                patterns: self.patterns.clone(),
                tags: self.tags.clone(),
                when: self.when.clone(),
                error_reported: AtomicBool::new(false),
            }),
        )
    }
}
