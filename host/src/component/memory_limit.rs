//! The per-instance memory limit: wasmtime's `StoreLimits` does the
//! enforcing; this wrapper also says so in the host log, because a guest
//! whose `memory.grow` fails usually reports only a vague allocation error
//! (or aborts), and the operator needs to know which limit was hit.

use std::sync::Arc;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

pub struct MemoryLimit {
    limits: StoreLimits,
    component: Arc<str>,
    bytes: usize,
}

impl MemoryLimit {
    pub fn new(component: Arc<str>, bytes: usize) -> Self {
        MemoryLimit {
            limits: StoreLimitsBuilder::new().memory_size(bytes).build(),
            component,
            bytes,
        }
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            tracing::warn!(
                component = %self.component,
                limit_mib = self.bytes / (1024 * 1024),
                requested_mib = desired / (1024 * 1024),
                "memory limit reached: the instance's memory.grow was refused (raise --memory-limit-mib?)"
            );
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}
