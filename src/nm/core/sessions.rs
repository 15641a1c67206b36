//! Client sessions: HELLO, the key challenge and PROVE, and RESET_USER.
//!
//! Uses the core's `users`, `user_keys` and `peers`. A connection is `Peer::Unknown` until it
//! proves a key (`Peer::Challenged` in between); a user binds the first key it proves (trust
//! on first use, durable before the WELCOME goes out, as every reply waits for the batch
//! before it) and only that key opens its sessions until an operator holding the cluster key
//! resets it. Challenge nonces come from the core's [`super::Env`], never from the OS
//! directly.

use super::*;

impl Core {
    /// HELLO: the user must now prove its key (see `crate::identity`).
    pub(super) fn hello(&mut self, conn: ConnId, user: String) {
        if let Err(e) = names::validate_user(&user) {
            return self.refuse_and_close(conn, e);
        }
        let nonce = self.env.random_hex(identity::NONCE_BYTES);
        self.reg.set_peer(
            conn,
            Peer::Challenged {
                user,
                nonce: nonce.clone(),
            },
        );
        self.reply(conn, Message::Challenge { nonce });
    }

    /// RESET_USER from an operator holding the cluster key: the user's next session binds
    /// a new key. Answered (after the change is durable) and closed either way.
    pub(super) fn reset_user(
        &mut self,
        conn: ConnId,
        user: &str,
        proof: &crate::protocol::KeyProof,
    ) {
        let checked = names::validate_user(user)
            .and_then(|()| identity::check_reset_proof(&self.key, user, proof))
            .and_then(|()| {
                self.reg
                    .use_proof(&proof.nonce, proof.ts_ms + PROOF_SKEW_MS, "reset proof")
            })
            .and_then(|()| {
                if self.ns.users.contains(user) {
                    Ok(())
                } else {
                    Err(err::not_found(format!("no user {user}")))
                }
            });
        if let Err(e) = checked {
            return self.refuse_and_close(conn, e);
        }
        self.reg.introduced(conn);
        if self.ns.user_keys.remove(user).is_some() {
            self.batch.push(StoreOp::ResetUserKey(user.to_string()));
        }
        log::info!(target: ev::NM_USER_KEY, user = user, outcome = "reset";
            "user {user} reset: its next session binds a new key");
        self.reply(conn, Message::Done {});
        self.out.push(Effect::Close { conn });
    }

    /// PROVE: checks the signature, binds a user with no key yet (trust on first use, made
    /// durable before the WELCOME goes out, as every reply waits for the batch before it),
    /// and refuses a key other than the bound one.
    pub(super) fn prove(
        &mut self,
        conn: ConnId,
        user: String,
        nonce: &str,
        key: String,
        sig: &str,
    ) {
        if !identity::verify(&key, &user, nonce, sig) {
            log::warn!(target: ev::NM_USER_KEY, user = user.as_str(), outcome = "refused";
                "refused {user}: the proof of its key does not verify");
            return self.refuse_and_close(
                conn,
                err::unauthorized(format!("the proof of {user}'s key does not verify")),
            );
        }
        match self.ns.user_keys.get(&user) {
            Some(bound) if *bound == key => {}
            Some(_) => {
                log::warn!(target: ev::NM_USER_KEY, user = user.as_str(), outcome = "refused";
                    "refused {user}: another key than the one it is bound to");
                return self.refuse_and_close(conn, identity::other_key(&user));
            }
            None => {
                self.ns.users.insert(user.clone());
                self.ns.user_keys.insert(user.clone(), key.clone());
                self.batch.push(StoreOp::PutUserKey(user.clone(), key));
                log::info!(target: ev::NM_USER_KEY, user = user.as_str(), outcome = "bound";
                    "user {user} bound to its first key");
            }
        }
        self.reg.introduced(conn);
        self.add_user(&user);
        log::info!(target: ev::NM_CLIENT_CONNECT, user = user.as_str(); "client {user} connected");
        self.reg.set_peer(
            conn,
            Peer::Client {
                user: user.clone(),
                busy: false,
            },
        );
        let lease_ms = Some(self.cfg.lease_ms());
        self.reply(conn, Message::Welcome { user, lease_ms });
    }
}
