#!/usr/bin/env python3
"""Certificate v1 interoperability with implementations that share no code with seb.

  sign-joserfc KEY.pem PAYLOAD.json KID     JWS made by the joserfc library
  sign-raw KEY.pem PAYLOAD.json KID         JWS assembled by hand over `cryptography`'s Ed25519
  verify-joserfc PUB.pem TOKEN              verified by joserfc; prints the payload
  verify-raw PUB.pem TOKEN                  verified by hand with `cryptography`; prints the payload
"""
import base64
import json
import sys
import warnings

from cryptography.hazmat.primitives import serialization


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def header(kid):
    return {"alg": "EdDSA", "typ": "seb-cert+jws", "kid": kid}


def main():
    mode, key_path = sys.argv[1], sys.argv[2]
    pem = open(key_path, "rb").read()
    if mode == "sign-raw":
        payload = open(sys.argv[3], "rb").read()
        key = serialization.load_pem_private_key(pem, password=None)
        signing_input = b64url(json.dumps(header(sys.argv[4])).encode()) + "." + b64url(payload)
        print(signing_input + "." + b64url(key.sign(signing_input.encode())))
    elif mode == "verify-raw":
        h, p, s = sys.argv[3].split(".")
        if json.loads(unb64url(h))["alg"] != "EdDSA":
            sys.exit("alg is not EdDSA")
        serialization.load_pem_public_key(pem).verify(unb64url(s), (h + "." + p).encode())
        print(unb64url(p).decode())
    else:
        from joserfc import jws
        from joserfc.jwk import OKPKey

        warnings.simplefilter("ignore")  # joserfc marks EdDSA as superseded by "Ed25519"
        key = OKPKey.import_key(pem)
        if mode == "sign-joserfc":
            payload = open(sys.argv[3], "rb").read()
            print(jws.serialize_compact(header(sys.argv[4]), payload, key, algorithms=["EdDSA"]))
        elif mode == "verify-joserfc":
            obj = jws.deserialize_compact(sys.argv[3], key, algorithms=["EdDSA"])
            print(obj.payload.decode())
        else:
            sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
