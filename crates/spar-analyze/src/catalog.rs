//! Every message type analyze can report: Istio's table (generated) and Spar's own.

use crate::message::{MessageType, SPAR_MESSAGE_TYPES};
use crate::messages_gen::MESSAGE_TYPES;

/// Every message type: Istio's, then Spar's.
pub fn all_message_types() -> impl Iterator<Item = &'static MessageType> {
    MESSAGE_TYPES.iter().chain(SPAR_MESSAGE_TYPES)
}

/// The message type for `code` (`IST0101`, `SPAR0001`, ...).
pub fn message_type(code: &str) -> Option<&'static MessageType> {
    all_message_types().find(|m| m.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_complete_and_unique() {
        assert_eq!(MESSAGE_TYPES.len(), 68);
        let mut codes: Vec<_> = all_message_types().map(|m| m.code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), 68 + SPAR_MESSAGE_TYPES.len());
        for m in all_message_types() {
            let verbs = m.template.matches('%').count() - 2 * m.template.matches("%%").count();
            assert_eq!(verbs, m.args.len(), "{} template/args mismatch", m.code);
        }
    }
}
