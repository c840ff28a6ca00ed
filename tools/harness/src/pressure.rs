//! Memory pressure on a Valkey from another tenant, as the chaos and soak runs inject it.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

/// The value of `name` in an `INFO` reply (`name:value` lines), trimmed.
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// What the other tenant writes while [`memory_pressure`] holds: `per_tick` values of 4 KiB
/// every 50 ms.
#[derive(Clone, Copy, Debug)]
pub struct Tenant {
    /// Values written per 50 ms tick.
    pub per_tick: usize,
    /// How many distinct keys (`tenant:N`) it cycles through; `None`: a new key per value (so
    /// memory keeps growing, which an eviction policy must answer).
    pub keys: Option<u64>,
    /// The values' expiry (`PX`), if any.
    pub ttl: Option<Duration>,
}

/// Sets `maxmemory` to the memory in use under `policy` (`noeviction`, `allkeys-lru`, ...),
/// lets `tenant` write through `filler` until `until` (its OOM errors are the point and are
/// ignored), then lifts the limit (`maxmemory 0`). `control` and `filler` are two connections
/// to the same server.
pub async fn memory_pressure(
    control: &mut MultiplexedConnection,
    mut filler: MultiplexedConnection,
    policy: &str,
    tenant: Tenant,
    until: Instant,
) -> redis::RedisResult<()> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(control)
        .await?;
    let used: u64 = info_field(&info, "used_memory")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "no used_memory in INFO",
            ))
        })?;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg(policy)
        .arg("maxmemory")
        .arg(used)
        .query_async(control)
        .await?;
    let junk = vec![b'j'; 4096];
    let mut n = 0u64;
    while Instant::now() < until {
        let mut p = redis::pipe();
        for _ in 0..tenant.per_tick {
            let key = format!("tenant:{}", tenant.keys.map_or(n, |k| n % k));
            let set = p.cmd("SET").arg(key).arg(&junk);
            if let Some(ttl) = tenant.ttl {
                set.arg("PX").arg(ttl.as_millis() as u64);
            }
            set.ignore();
            n += 1;
        }
        let _ = p.query_async::<()>(&mut filler).await;
        tokio::time::sleep(
            Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(control)
        .await
}
