//! Jobs and backups restricted to the hosts a caller may see (RBAC scopes):
//! lists are filtered before paging, so pages and `has_more` never count a
//! job or backup of a host outside the caller's [`HostFilter`].
use std::collections::HashMap;

use super::JRead;
use crate::jobs::{Job, JobFilter};
use crate::model::Page;
use crate::rbac::{HostFilter, Labels};
use crate::store::jobs::BackupStatus;
use crate::store::sql::B;
use crate::store::{FILTERED_SCAN_ROWS, Store, StoreError, map_from_json};

impl Store {
    /// The control-plane labels of the hosts with these IDs (missing hosts are absent).
    pub async fn host_labels(&self, ids: &[String]) -> Result<HashMap<String, Labels>, StoreError> {
        let mut out = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let mut c = JRead::acquire(self).await?;
        for chunk in ids.chunks(500) {
            let rows = c
                .conn()
                .fetch("SELECT id, labels FROM hosts WHERE id IN_LIST($1)", &[B::List(chunk)])
                .await?;
            for r in rows {
                out.insert(r.text("id")?, map_from_json(&r.text("labels")?, "labels"));
            }
        }
        Ok(out)
    }

    /// Keeps the items whose host `access` lets the caller see (a host that
    /// no longer exists only for callers limited by nothing).
    async fn retain_visible<T>(
        &self,
        items: Vec<T>,
        host_of: impl Fn(&T) -> &str,
        access: &HostFilter,
    ) -> Result<Vec<T>, StoreError> {
        if access.is_all() {
            return Ok(items);
        }
        let mut ids: Vec<String> = items.iter().map(|i| host_of(i).to_string()).collect();
        ids.sort_unstable();
        ids.dedup();
        let labels = self.host_labels(&ids).await?;
        Ok(items
            .into_iter()
            .filter(|i| labels.get(host_of(i)).is_some_and(|l| access.matches(l)))
            .collect())
    }

    /// [`Store::list_jobs`], keeping only jobs of hosts `access` lets the
    /// caller see (filtered before paging).
    pub async fn list_jobs_visible(
        &self,
        filter: &JobFilter,
        access: &HostFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<Job>, StoreError> {
        if access.is_all() {
            return self.list_jobs(filter, before, limit).await;
        }
        let limit = limit.max(1);
        let scan = FILTERED_SCAN_ROWS.max(limit + 1);
        let mut cursor = before.map(str::to_string);
        let mut items = Vec::new();
        loop {
            let page = self.list_jobs(filter, cursor.as_deref(), scan).await?;
            if let Some(last) = page.items.last() {
                cursor = Some(last.id.clone());
            }
            for job in self.retain_visible(page.items, |j| &j.host_id, access).await? {
                if items.len() == limit {
                    return Ok(Page { items, has_more: true });
                }
                items.push(job);
            }
            if !page.has_more {
                return Ok(Page { items, has_more: false });
            }
        }
    }

    /// Of these jobs, those of hosts `access` lets the caller see.
    pub async fn visible_jobs(&self, jobs: Vec<Job>, access: &HostFilter) -> Result<Vec<Job>, StoreError> {
        self.retain_visible(jobs, |j| &j.host_id, access).await
    }

    /// [`Store::list_backups`] of the hosts `access` lets the caller see.
    pub async fn list_backups_visible(
        &self,
        host_id: Option<&str>,
        access: &HostFilter,
    ) -> Result<Vec<BackupStatus>, StoreError> {
        let rows = self.list_backups(host_id).await?;
        self.retain_visible(rows, |b| &b.host_id, access).await
    }
}
