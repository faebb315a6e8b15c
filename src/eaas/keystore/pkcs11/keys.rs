//! The key pairs in the token: finding the objects of a key, making a
//! key pair, and the RSA-OAEP operations (the [`KeyStore`] methods).
//!
//! The parent module's doc gives the objects' attributes and the OAEP
//! parameters.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use zeroize::Zeroizing;

use super::{Pkcs11KeyStore, object_label, token_error};
use crate::eaas::keystore::{Generated, KeyStore, KeyStoreError, MIN_KEY_BITS, max_plaintext_len};
use crate::eaas::secret::KeyId;
use crate::sync::lock;

/// The public exponent of new keys: 65537.
const PUBLIC_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];

/// The mechanism of both directions: OAEP with SHA-1, MGF1-SHA1, no label.
fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ))
}

/// Return values of `C_Decrypt` that mean "this is not a ciphertext of this
/// key". SoftHSM2 reports an OAEP decoding failure as `CKR_GENERAL_ERROR`;
/// other tokens use the specific values.
fn is_bad_ciphertext(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::GeneralError
    )
}

impl Pkcs11KeyStore {
    /// The one object of `class` labelled for `id`, if any.
    fn find(
        &self,
        session: &Session,
        id: &KeyId,
        class: ObjectClass,
    ) -> Result<Option<ObjectHandle>, KeyStoreError> {
        let label = object_label(id);
        let template = [
            Attribute::Class(class),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Label(label.clone().into_bytes()),
        ];
        let found = session.find_objects(&template).map_err(token_error)?;
        match found[..] {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(KeyStoreError::BadTokenKey(format!(
                "{} {class} objects are labelled {label:?}; expected one",
                found.len()
            ))),
        }
    }

    /// The private key of `id`; `UnknownKey` if there is none.
    fn private_key(&self, session: &Session, id: &KeyId) -> Result<ObjectHandle, KeyStoreError> {
        self.find(session, id, ObjectClass::PRIVATE_KEY)?
            .ok_or_else(|| KeyStoreError::UnknownKey(id.clone()))
    }

    /// The public key of `id`; `UnknownKey` if the key does not exist.
    fn public_key(&self, session: &Session, id: &KeyId) -> Result<ObjectHandle, KeyStoreError> {
        if let Some(key) = self.find(session, id, ObjectClass::PUBLIC_KEY)? {
            return Ok(key);
        }
        match self.find(session, id, ObjectClass::PRIVATE_KEY)? {
            None => Err(KeyStoreError::UnknownKey(id.clone())),
            Some(_) => Err(KeyStoreError::BadTokenKey(format!(
                "a private key is labelled {:?} but no public key",
                object_label(id)
            ))),
        }
    }

    /// The modulus length in bytes of `key` (public or private: the
    /// modulus is never sensitive), refusing keys below [`MIN_KEY_BITS`].
    fn modulus_len(
        &self,
        session: &Session,
        id: &KeyId,
        key: ObjectHandle,
    ) -> Result<usize, KeyStoreError> {
        let attributes = session
            .get_attributes(key, &[AttributeType::Modulus])
            .map_err(token_error)?;
        let len = attributes.iter().find_map(|a| match a {
            Attribute::Modulus(m) => Some(m.len() - m.iter().take_while(|&&b| b == 0).count()),
            _ => None,
        });
        let label = object_label(id);
        match len {
            Some(len) if len * 8 >= MIN_KEY_BITS => Ok(len),
            Some(len) => Err(KeyStoreError::BadTokenKey(format!(
                "{label:?} is a {}-bit key, at least {MIN_KEY_BITS} required",
                len * 8
            ))),
            None => Err(KeyStoreError::BadTokenKey(format!(
                "the token does not show the modulus of {label:?}"
            ))),
        }
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn generate(&self, id: &KeyId) -> Result<Generated, KeyStoreError> {
        let _guard = lock(&self.generate_lock);
        let session = self.session()?;
        if self.find(&session, id, ObjectClass::PRIVATE_KEY)?.is_some() {
            session.keep();
            return Ok(Generated::Existed);
        }
        let label = object_label(id);
        if self.find(&session, id, ObjectClass::PUBLIC_KEY)?.is_some() {
            return Err(KeyStoreError::BadTokenKey(format!(
                "a public key is labelled {label:?} but no private key; remove it from the \
                 token or use another version"
            )));
        }
        tracing::info!(
            key = %id, bits = self.bits.get(), token = %self.token_label, label,
            "generating an RSA key pair in the token"
        );
        let bits = Ulong::try_from(self.bits.get())
            .map_err(|e| KeyStoreError::Crypto(format!("key size: {e}")))?;
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::ModulusBits(bits),
            Attribute::PublicExponent(PUBLIC_EXPONENT.to_vec()),
            Attribute::Encrypt(true),
            Attribute::Verify(false),
            Attribute::Wrap(false),
            Attribute::Label(label.clone().into_bytes()),
            Attribute::Id(label.clone().into_bytes()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Decrypt(true),
            Attribute::Sign(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.clone().into_bytes()),
            Attribute::Id(label.into_bytes()),
        ];
        session
            .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
            .map_err(|e| KeyStoreError::Crypto(format!("key generation in the token: {e}")))?;
        session.keep();
        Ok(Generated::Created)
    }

    fn encrypt(&self, id: &KeyId, plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let session = self.session()?;
        let key = self.public_key(&session, id)?;
        let modulus_len = self.modulus_len(&session, id, key)?;
        let max = max_plaintext_len(modulus_len);
        if plaintext.len() > max {
            session.keep();
            return Err(KeyStoreError::PlaintextTooLong {
                key: id.clone(),
                len: plaintext.len(),
                max,
                bits: modulus_len * 8,
            });
        }
        let ciphertext = session
            .encrypt(&oaep(), key, plaintext)
            .map_err(|e| KeyStoreError::Crypto(format!("encryption under {id}: {e}")))?;
        session.keep();
        Ok(ciphertext)
    }

    fn decrypt(&self, id: &KeyId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let session = self.session()?;
        let key = self.private_key(&session, id)?;
        let modulus_len = self.modulus_len(&session, id, key)?;
        if ciphertext.len() != modulus_len {
            session.keep();
            return Err(KeyStoreError::DecryptionFailed(id.clone()));
        }
        match session.decrypt(&oaep(), key, ciphertext) {
            Ok(plaintext) => {
                session.keep();
                Ok(Zeroizing::new(plaintext))
            }
            Err(CkError::Pkcs11(rv, _)) if is_bad_ciphertext(rv) => {
                // The failed call ended the operation; the session is
                // closed anyway, in case the token thinks otherwise.
                tracing::debug!(key = %id, %rv, "C_Decrypt refused the ciphertext");
                Err(KeyStoreError::DecryptionFailed(id.clone()))
            }
            Err(e) => Err(token_error(e)),
        }
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 token {:?} (slot {}, module {})",
            self.token_label,
            self.slot.id(),
            self.module.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eaas::keystore::pkcs11::tests::{in_own_token, open};
    use crate::eaas::secret::{SecretPath, SecretVersion};
    use rsa::{BoxedUint, Oaep, RsaPublicKey};

    fn id(path: &str, version: &str) -> KeyId {
        KeyId {
            path: SecretPath::parse(path).unwrap(),
            version: SecretVersion::parse(version).unwrap(),
        }
    }

    /// The objects labelled for `id`, of any class.
    fn objects(store: &Pkcs11KeyStore, id: &KeyId) -> Vec<ObjectHandle> {
        let session = store.session().unwrap();
        let found = session
            .find_objects(&[Attribute::Label(object_label(id).into_bytes())])
            .unwrap();
        session.keep();
        found
    }

    fn attributes(
        store: &Pkcs11KeyStore,
        key: ObjectHandle,
        which: &[AttributeType],
    ) -> Vec<Attribute> {
        let session = store.session().unwrap();
        let attributes = session.get_attributes(key, which).unwrap();
        session.keep();
        attributes
    }

    #[test]
    fn generate_is_idempotent_and_keys_are_not_extractable() {
        in_own_token(
            module_path!(),
            "generate_is_idempotent_and_keys_are_not_extractable",
            || {
                let store = open();
                let key = id("dropzone/rsa", "1");
                assert_eq!(object_label(&key), "dropzone/rsa#1");
                assert!(matches!(
                    store.encrypt(&key, b"x"),
                    Err(KeyStoreError::UnknownKey(_))
                ));
                assert!(matches!(
                    store.decrypt(&key, &[0; 256]),
                    Err(KeyStoreError::UnknownKey(_))
                ));
                assert_eq!(store.generate(&key).unwrap(), Generated::Created);
                assert_eq!(store.generate(&key).unwrap(), Generated::Existed);
                // Another store on the same token sees the key too.
                assert_eq!(open().generate(&key).unwrap(), Generated::Existed);
                assert_eq!(objects(&store, &key).len(), 2, "one key pair");

                let session = store.session().unwrap();
                let private = store.private_key(&session, &key).unwrap();
                let public = store.public_key(&session, &key).unwrap();
                session.keep();
                drop(session);
                let label = b"dropzone/rsa#1".to_vec();
                let private_attributes = attributes(
                    &store,
                    private,
                    &[
                        AttributeType::Token,
                        AttributeType::Private,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::AlwaysSensitive,
                        AttributeType::NeverExtractable,
                        AttributeType::Decrypt,
                        AttributeType::Sign,
                        AttributeType::Unwrap,
                        AttributeType::Label,
                        AttributeType::Id,
                    ],
                );
                for expected in [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::AlwaysSensitive(true),
                    Attribute::NeverExtractable(true),
                    Attribute::Decrypt(true),
                    Attribute::Sign(false),
                    Attribute::Unwrap(false),
                    Attribute::Label(label.clone()),
                    Attribute::Id(label.clone()),
                ] {
                    assert!(
                        private_attributes.contains(&expected),
                        "{expected:?} not in {private_attributes:?}"
                    );
                }
                // The secret parts cannot be read.
                let secret = attributes(
                    &store,
                    private,
                    &[AttributeType::PrivateExponent, AttributeType::Prime1],
                );
                assert!(secret.is_empty(), "{secret:?}");
                let public_attributes = attributes(
                    &store,
                    public,
                    &[
                        AttributeType::Token,
                        AttributeType::Private,
                        AttributeType::Encrypt,
                        AttributeType::ModulusBits,
                        AttributeType::PublicExponent,
                        AttributeType::Id,
                    ],
                );
                for expected in [
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::Encrypt(true),
                    Attribute::ModulusBits(Ulong::from(2048)),
                    Attribute::PublicExponent(vec![1, 0, 1]),
                    Attribute::Id(label.clone()),
                ] {
                    assert!(
                        public_attributes.contains(&expected),
                        "{expected:?} not in {public_attributes:?}"
                    );
                }

                // Ten concurrent requests for one new key make one key pair.
                let race = id("race", "3");
                let barrier = std::sync::Barrier::new(10);
                let results: Vec<Generated> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..10)
                        .map(|_| {
                            s.spawn(|| {
                                barrier.wait();
                                store.generate(&race).unwrap()
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                assert_eq!(
                    results.iter().filter(|&&g| g == Generated::Created).count(),
                    1,
                    "{results:?}"
                );
                assert_eq!(objects(&store, &race).len(), 2);
                let c = store.encrypt(&race, b"shared").unwrap();
                assert_eq!(&**store.decrypt(&race, &c).unwrap(), b"shared");
            },
        );
    }

    #[test]
    fn round_trip_interop_and_tamper() {
        in_own_token(module_path!(), "round_trip_interop_and_tamper", || {
            let store = open();
            let key = id("dropzone/rsa", "1");
            store.generate(&key).unwrap();

            // Round trip; OAEP is randomised; 214 bytes fit RSA-2048, 215 do not.
            let dek = "0123456789abcdef".repeat(4);
            let c1 = store.encrypt(&key, dek.as_bytes()).unwrap();
            let c2 = store.encrypt(&key, dek.as_bytes()).unwrap();
            assert_eq!(c1.len(), 256);
            assert_ne!(c1, c2);
            assert_eq!(&**store.decrypt(&key, &c1).unwrap(), dek.as_bytes());
            assert_eq!(&**store.decrypt(&key, &c2).unwrap(), dek.as_bytes());
            let full = store.encrypt(&key, &[b'a'; 214]).unwrap();
            assert_eq!(&**store.decrypt(&key, &full).unwrap(), &[b'a'; 214]);
            let empty = store.encrypt(&key, b"").unwrap();
            assert!(store.decrypt(&key, &empty).unwrap().is_empty());
            match store.encrypt(&key, &[b'a'; 215]) {
                Err(KeyStoreError::PlaintextTooLong { len, max, bits, .. }) => {
                    assert_eq!((len, max, bits), (215, 214, 2048));
                }
                other => panic!("unexpected {:?}", other.map(|_| ())),
            }

            // An independent OAEP-SHA1 encryption (the rsa crate, with the
            // public key read from the token) decrypts in the token, so the
            // token's OAEP is the file store's and the wire API's; SHA-256
            // OAEP does not.
            let session = store.session().unwrap();
            let public = store.public_key(&session, &key).unwrap();
            session.keep();
            drop(session);
            let parts = attributes(
                &store,
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            );
            let (mut n, mut e) = (None, None);
            for a in parts {
                match a {
                    Attribute::Modulus(m) => n = Some(BoxedUint::from_be_slice_vartime(&m)),
                    Attribute::PublicExponent(x) => {
                        e = Some(BoxedUint::from_be_slice_vartime(&x));
                    }
                    _ => {}
                }
            }
            let theirs = RsaPublicKey::new(n.unwrap(), e.unwrap()).unwrap();
            let c = theirs
                .encrypt(
                    &mut rand::rng(),
                    Oaep::<sha1::Sha1>::new(),
                    b"from elsewhere",
                )
                .unwrap();
            assert_eq!(&**store.decrypt(&key, &c).unwrap(), b"from elsewhere");
            let c = theirs
                .encrypt(&mut rand::rng(), Oaep::<sha2::Sha256>::new(), b"sha-256")
                .unwrap();
            assert!(matches!(
                store.decrypt(&key, &c),
                Err(KeyStoreError::DecryptionFailed(_))
            ));

            // Every flipped bit, and a wrong length, is refused as one error.
            for i in [0, 1, 128, 255] {
                let mut bad = c1.clone();
                bad[i] ^= 0x01;
                assert!(
                    matches!(
                        store.decrypt(&key, &bad),
                        Err(KeyStoreError::DecryptionFailed(_))
                    ),
                    "byte {i}"
                );
            }
            for bad in [&c1[1..], &[][..], &[c1.as_slice(), &[0]].concat()] {
                assert!(matches!(
                    store.decrypt(&key, bad),
                    Err(KeyStoreError::DecryptionFailed(_))
                ));
            }
            assert!(matches!(
                store.decrypt(&id("dropzone/rsa", "2"), &c1),
                Err(KeyStoreError::UnknownKey(_))
            ));

            // With every session closed the token logs the application out;
            // the next request logs in again.
            lock(&store.idle).clear();
            assert_eq!(&**store.decrypt(&key, &c1).unwrap(), dek.as_bytes());
            // A new store (as after a restart) uses the same key.
            assert_eq!(&**open().decrypt(&key, &c2).unwrap(), dek.as_bytes());
        });
    }
}
