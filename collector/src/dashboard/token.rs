//! Short-lived dashboard login tokens: a reader asks for one over gRPC
//! (`IssueDashboardToken`, `collectorctl dashboard-token`) and hands it to
//! a browser, which trades it for a session cookie.
//!
//! A token is `ROLE.EXPIRES.NAME.TAG` (name hex-encoded), where TAG is an
//! HMAC-SHA256 over the rest under a key this collector process drew at
//! start: tokens cannot be forged or extended, and all of them die with the
//! process (a restart logs everyone out, which is the safe direction).

use residency_proto::chain::{hex, unhex};
use ring::{hmac, rand::SecureRandom};

use crate::auth::Caller;

/// Longest a token lives.
pub const MAX_TTL_SECONDS: i64 = 12 * 3600;
/// Default lifetime.
pub const DEFAULT_TTL_SECONDS: i64 = 3600;

/// The signing key.
pub struct Keys {
    key: hmac::Key,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the login token is malformed (copy it whole from `collectorctl dashboard-token`)")]
    Malformed,
    #[error(
        "the login token was not issued by this collector process (it restarted, or the token was altered): get a new one with `collectorctl dashboard-token`"
    )]
    Forged,
    #[error("the login token expired: get a new one with `collectorctl dashboard-token`")]
    Expired,
}

impl Keys {
    /// A fresh random key.
    pub fn generate() -> Keys {
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut k)
            .expect("the system's random source works");
        Keys {
            key: hmac::Key::new(hmac::HMAC_SHA256, &k),
        }
    }

    /// A token for `caller` (a reader) until `expires_ns`.
    pub fn issue(&self, caller: &Caller, expires_ns: i64) -> String {
        let (role, name) = match caller {
            Caller::Operator { name } => ("operator", name.as_str()),
            Caller::Auditor { name } => ("auditor", name.as_str()),
            Caller::Agent { .. } => unreachable!("agents get no dashboard tokens"),
        };
        let body = format!("{role}.{expires_ns}.{}", hex(name.as_bytes()));
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", hex(tag.as_ref()))
    }

    /// Who `token` names and until when, if it holds at `now_ns`.
    pub fn check(&self, token: &str, now_ns: i64) -> Result<(Caller, i64), Refused> {
        let token = token.trim();
        let (body, tag) = token.rsplit_once('.').ok_or(Refused::Malformed)?;
        let tag = unhex(tag).ok_or(Refused::Malformed)?;
        hmac::verify(&self.key, body.as_bytes(), &tag).map_err(|_| Refused::Forged)?;
        let mut parts = body.splitn(3, '.');
        let (Some(role), Some(expires), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Refused::Malformed);
        };
        let expires: i64 = expires.parse().map_err(|_| Refused::Malformed)?;
        let name = unhex(name)
            .and_then(|n| String::from_utf8(n).ok())
            .ok_or(Refused::Malformed)?;
        if now_ns >= expires {
            return Err(Refused::Expired);
        }
        let caller = match role {
            "operator" => Caller::Operator { name },
            "auditor" => Caller::Auditor { name },
            _ => return Err(Refused::Malformed),
        };
        Ok((caller, expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hold_until_they_expire_and_cannot_be_altered() {
        let keys = Keys::generate();
        let who = Caller::Auditor {
            name: "cert auditor.example".into(),
        };
        let t = keys.issue(&who, 2_000);
        assert_eq!(keys.check(&t, 1_000), Ok((who.clone(), 2_000)));
        assert_eq!(keys.check(&t, 2_000), Err(Refused::Expired));
        // Promoting oneself, or living longer, breaks the tag.
        let promoted = t.replacen("auditor", "operator", 1);
        assert_eq!(keys.check(&promoted, 1_000), Err(Refused::Forged));
        let longer = t.replacen("2000", "9000", 1);
        assert_eq!(keys.check(&longer, 1_000), Err(Refused::Forged));
        // Another process's key.
        assert_eq!(Keys::generate().check(&t, 1_000), Err(Refused::Forged));
        assert_eq!(keys.check("garbage", 1_000), Err(Refused::Malformed));
        assert_eq!(keys.check("a.b.zz", 1_000), Err(Refused::Malformed));
    }
}
