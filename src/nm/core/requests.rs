//! Access requests (RACC, VIEWACCR, APPROVEACCR, DISACCR): decisions of the core (a child
//! module of `core.rs`).
//!
//! A request needs an existing file, a requester who is not the owner and does not already
//! have what it asks (else CONFLICT), and no other pending request of that user for that
//! file. The id counter (`meta.next_request`) is written in the same batch as the request.
//! Only the file's owner lists and answers requests; approval grants exactly what was asked:
//! `R` read, `RW` read and write, and `W` read and write too (the access model has no
//! write-only right, and writing a sentence means reading it). Approval never lowers an
//! existing grant. Pending requests follow a MOVE and go with a DELETE.
//!
//! Requests live only on the name server, in the durable `requests` table, because access
//! rights do: tickets are minted from the name server's records, so a storage server's
//! failover cannot lose or change them. Ids come from a durable counter that only rises, so
//! an id is never reused, even after its request is answered or the name server restarts.

use super::*;
use crate::protocol::AccessKind;

impl Core {
    /// RACC f kind: a non-owner asks for access it does not have yet, once at a time.
    pub(super) fn request_access(
        &mut self,
        user: &str,
        file: &str,
        kind: AccessKind,
    ) -> Result<u64, WireError> {
        let (canon, rec) = self.lookup(file)?;
        let shown = names::display(&canon);
        if rec.owner == user {
            return Err(err::invalid(format!(
                "You own {shown} and already have read and write access"
            )));
        }
        let covered = match rec.access.get(user) {
            Some(true) => true,
            Some(false) => !kind.grants_write(),
            None => false,
        };
        if covered {
            let has = if rec.can_write(user) { "RW" } else { "R" };
            return Err(err::conflict(format!(
                "User {user} already has {has} access to {shown}"
            )));
        }
        if let Some(r) = self
            .ns
            .requests
            .values()
            .find(|r| r.user == user && r.file == canon)
        {
            return Err(err::conflict(format!(
                "Access request #{} for {shown} is already pending",
                r.id
            )));
        }
        let id = self.ns.next_request;
        self.ns.next_request += 1;
        let req = AccessRequest {
            id,
            user: user.to_string(),
            file: canon.clone(),
            kind,
            created_ms: self.wall_ms(),
        };
        self.batch
            .push(StoreOp::PutNextRequest(self.ns.next_request));
        self.batch.push(StoreOp::PutRequest(req.clone()));
        self.ns.requests.insert(id, req);
        log::info!(target: ev::NM_FILE_CHANGE, file = canon.as_str(), user = user, id = id;
            "{user} requests {} access to {canon} (#{id})", kind.as_str());
        Ok(id)
    }

    /// VIEWACCR: the pending requests on files `user` owns, by id, names in display form.
    pub(super) fn view_requests(&self, user: &str) -> Vec<AccessRequest> {
        self.ns
            .requests
            .values()
            .filter(|r| self.ns.files.get(&r.file).is_some_and(|f| f.owner == user))
            .map(|r| AccessRequest {
                file: names::display(&r.file),
                ..r.clone()
            })
            .collect()
    }

    /// APPROVEACCR / DISACCR: only the file's owner answers. Approval grants exactly what was
    /// asked (R: read; W or RW: read and write), never less than the user already has.
    pub(super) fn answer_request(
        &mut self,
        user: &str,
        id: u64,
        approve: bool,
    ) -> Result<(), WireError> {
        let not_pending = || err::not_found(format!("No pending access request #{id}"));
        let req = self.ns.requests.get(&id).cloned().ok_or_else(not_pending)?;
        let rec = self.ns.files.get(&req.file).ok_or_else(not_pending)?;
        if rec.owner != user {
            return Err(err::unauthorized(format!(
                "Only the owner of {} can answer access request #{id}",
                names::display(&req.file)
            )));
        }
        if approve {
            let mut rec = rec.clone();
            let write = req.kind.grants_write() || rec.can_write(&req.user);
            rec.access.insert(req.user.clone(), write);
            self.put_file(&req.file, rec);
        }
        self.ns.requests.remove(&id);
        self.batch.push(StoreOp::DelRequest(id));
        let verdict = if approve { "approved" } else { "refused" };
        log::info!(target: ev::NM_FILE_CHANGE, file = req.file.as_str(), user = user, id = id;
            "{user} {verdict} access request #{id}");
        Ok(())
    }

    /// A deleted file takes its pending requests with it.
    pub(super) fn drop_requests_for(&mut self, file: &str) {
        let ids: Vec<u64> = self
            .ns
            .requests
            .values()
            .filter(|r| r.file == file)
            .map(|r| r.id)
            .collect();
        for id in ids {
            self.ns.requests.remove(&id);
            self.batch.push(StoreOp::DelRequest(id));
        }
    }

    /// A moved file's pending requests follow it.
    pub(super) fn rename_requests(&mut self, from: &str, to: &str) {
        let mut moved = Vec::new();
        for r in self.ns.requests.values_mut().filter(|r| r.file == from) {
            r.file = to.to_string();
            moved.push(r.clone());
        }
        for r in moved {
            self.batch.push(StoreOp::PutRequest(r));
        }
    }
}
