#!/usr/bin/env python3
"""Interop check: a real WebAuthn client stack against the obr agent's virtual key.

The obr agent presents a FIDO2 security key on a UNIX SOCK_SEQPACKET socket, where one
datagram is one 64-byte CTAPHID report with no report-ID byte. This script drives that
socket with Yubico's python-fido2 (pinned in requirements.txt), an implementation written
independently of obr, and so shows that obr's CTAPHID framing, CTAP2 CBOR encoding and
WebAuthn data (authenticator data, attestation object, assertion signature) are what an
ordinary platform client and relying party accept:

* ``CtapHidDevice`` completes the CTAPHID INIT exchange over the socket and the key
  advertises CTAP2 (CAPABILITY_CBOR) with a getInfo response python-fido2 can parse
  (python-fido2 rejects non-canonical CBOR);
* ``Fido2Client.make_credential`` registers a credential that ``Fido2Server`` verifies
  (``register_complete``: client data, RP ID hash, UP/UV flags);
* ``Fido2Client.get_assertion`` with the credential in allowCredentials yields assertions
  whose signatures ``Fido2Server.authenticate_complete`` verifies with the registered public
  key, ``--assertions`` times, with a strictly increasing signature counter;
* with ``--discoverable-login``, an assertion with an empty allowCredentials finds the
  resident credential and returns the registered user handle;
* with ``--attestation direct --attestation-ca PEM``, ``Fido2Server`` verifies the packed
  attestation statement and its x5c chain up to that CA (python-fido2's packed verifier
  also checks the certificate's OU, basic constraints and AAGUID extension against the
  authenticator data); ``--expect-aaguid`` checks the AAGUID itself;
* with ``--cred-protect N``, the client's ``credentialProtectionPolicy`` input reaches the
  key and the authenticator data reports level N;
* with ``--hmac-secret``, ``hmacCreateSecret`` is confirmed at registration, and
  ``hmacGetSecret`` assertions show: the same salt gives the same output, another salt
  another output, and a user-verified assertion an output of its own;
* ``--algorithm eddsa`` makes the RP accept only EdDSA (COSE -8).

Output: one JSON object per line on stdout, one per step, ending with
``{"step": "done", "ok": true}`` and exit status 0; on any failure the last line is
``{"step": "error", ...}`` and the exit status is 1. Diagnostics go to stderr (``-v``,
``-vv`` for a dump of every report). The client never prompts and never reads stdin: a
PIN request fails the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from fido2.client import (
        ClientError,
        DefaultClientDataCollector,
        Fido2Client,
        UserInteraction,
    )
    from fido2.attestation import AttestationVerifier
    from fido2.ctap import CtapError
    from fido2.ctap2 import Ctap2
    from fido2.ctap2.extensions import CredProtectExtension, HmacSecretExtension
    from fido2.hid import CAPABILITY, CtapHidDevice
    from fido2.hid.base import CtapHidConnection, HidDescriptor
    from fido2.server import Fido2Server
    from fido2.utils import LOG_LEVEL_TRAFFIC, websafe_decode, websafe_encode
    from fido2.webauthn import (
        AuthenticatorData,
        PublicKeyCredentialParameters,
        PublicKeyCredentialRpEntity,
        PublicKeyCredentialUserEntity,
        ResidentKeyRequirement,
        UserVerificationRequirement,
    )
except ImportError as _import_error:  # pragma: no cover - environment problem
    print(
        json.dumps(
            {
                "step": "error",
                "phase": "import",
                "exception": type(_import_error).__name__,
                "message": f"python-fido2 is not importable ({_import_error}); "
                "install tests/python/requirements.txt",
            }
        ),
        flush=True,
    )
    sys.exit(1)

log = logging.getLogger("obr_interop")

#: CTAPHID report size on the socket, in both directions (CTAP 2.1 §11.2.4).
REPORT_LEN = 64
#: Largest datagram accepted from the socket; anything other than REPORT_LEN is an error.
RECV_BUFFER = 4096
#: Extra time the socket waits after python-fido2's own per-request timeout has fired and
#: it has sent CTAPHID_CANCEL, for the key's KEEPALIVE_CANCEL answer.
CANCEL_GRACE_S = 5.0


class SeqpacketCtapHidConnection(CtapHidConnection):
    """A ``CtapHidConnection`` over a connected UNIX ``SOCK_SEQPACKET`` socket.

    python-fido2's ``CtapHidDevice`` hands ``write_packet`` exactly
    ``report_size_out`` bytes with no report-ID byte (only its Linux hidraw connection
    prepends the ``0x00`` report ID, in its own ``write_packet``), and expects
    ``read_packet`` to return one input report without a report ID. That is exactly
    the socket's framing, so reports pass through unchanged.

    Every blocking call is bounded by ``timeout`` (idle time per report) and by the
    deadline set with :meth:`arm` (whole operation), so the script cannot hang.
    """

    def __init__(self, path: str, timeout: float):
        self._timeout = timeout
        self._deadline: float | None = None
        self._armed_for = 0.0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            if e.filename is None:
                e.filename = path  # name the socket in the message
            raise
        except BaseException:
            self._sock.close()
            raise

    def arm(self, seconds: float | None) -> None:
        """Bounds every following read and write by a deadline ``seconds`` from now."""
        self._deadline = None if seconds is None else time.monotonic() + seconds
        self._armed_for = seconds or 0.0

    def _bound(self) -> float:
        """Sets the socket timeout for the next call; raises once the deadline passed."""
        limit = self._timeout
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise self._deadline_error()
            limit = min(limit, left)
        self._sock.settimeout(limit)
        return limit

    def _deadline_error(self) -> TimeoutError:
        return TimeoutError(
            f"CTAP operation unfinished after {self._armed_for:.1f}s (python-fido2 sends "
            "CTAPHID_CANCEL at --timeout; the agent never ended the request)"
        )

    def _timed_out(self, limit: float, what: str) -> TimeoutError:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return self._deadline_error()
        return TimeoutError(f"{what} within {limit:.1f}s")

    def read_packet(self) -> bytes:
        limit = self._bound()
        try:
            data = self._sock.recv(RECV_BUFFER)
        except TimeoutError:
            raise self._timed_out(limit, "no CTAPHID report from the agent") from None
        if not data:
            raise ConnectionError("the agent closed the HID socket")
        if len(data) != REPORT_LEN:
            raise ConnectionError(
                f"datagram of {len(data)} bytes from the agent, expected one "
                f"{REPORT_LEN}-byte report: {data[:80].hex()}"
            )
        return data

    def write_packet(self, data: bytes) -> None:
        data = bytes(data)
        if len(data) > REPORT_LEN:
            # python-fido2 2.2.1 never does this (CtapHidDevice pads to report_size_out
            # and adds no report ID); refuse rather than guess which byte to drop.
            raise ValueError(f"report of {len(data)} bytes, longer than {REPORT_LEN}")
        data = data.ljust(REPORT_LEN, b"\0")
        limit = self._bound()
        try:
            sent = self._sock.send(data)
        except TimeoutError:
            raise self._timed_out(limit, "the agent did not take a report") from None
        if sent != REPORT_LEN:
            raise ConnectionError(f"short write to the HID socket: {sent} of {REPORT_LEN} bytes")

    def close(self) -> None:
        self._sock.close()


def open_device(path: str, timeout: float) -> tuple[CtapHidDevice, SeqpacketCtapHidConnection]:
    """Connects to the agent and runs the CTAPHID INIT exchange."""
    connection = SeqpacketCtapHidConnection(path, timeout)
    descriptor = HidDescriptor(
        path=path,
        vid=0x1209,  # pid.codes
        pid=0x0001,
        report_size_in=REPORT_LEN,
        report_size_out=REPORT_LEN,
        product_name="obr virtual key",
        serial_number=None,
    )
    try:
        connection.arm(timeout)
        device = CtapHidDevice(descriptor, connection)  # sends CTAPHID_INIT
    except BaseException:
        connection.close()
        raise
    return device, connection


class PinRequestedError(RuntimeError):
    """The client would need a PIN, which this non-interactive script never supplies."""


class NonInteractive(UserInteraction):
    """Never prompts and never reads stdin."""

    def prompt_up(self) -> None:
        log.info("the authenticator is waiting for user presence")

    def request_pin(self, permissions, rp_id):
        raise PinRequestedError(
            "python-fido2 asked for a PIN (the authenticator advertises clientPin and "
            f"user verification is needed for rp {rp_id!r}, permissions "
            f"{permissions!r}); this non-interactive client never supplies one"
        )

    def request_uv(self, permissions, rp_id) -> bool:
        log.info("allowing built-in user verification for rp %r", rp_id)
        return True


def emit(step: str, **fields) -> None:
    print(json.dumps({"step": step, **fields}, default=str), flush=True)


def b64url(data: bytes) -> str:
    return websafe_encode(data)


def flags_json(auth_data: AuthenticatorData) -> dict:
    f = auth_data.flags
    F = AuthenticatorData.FLAG
    return {
        "up": bool(f & F.UP),
        "uv": bool(f & F.UV),
        "be": bool(f & F.BE),
        "bs": bool(f & F.BS),
        "at": bool(f & F.AT),
        "ed": bool(f & F.ED),
    }


def describe(error: BaseException) -> str:
    if isinstance(error, ClientError):
        text = f"ClientError {error.code.name}"
        if error.cause is not None:
            text += f" (cause: {error.cause})"
        return text
    if isinstance(error, CtapError):
        return f"CtapError {error}"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class CheckFailed(Exception):
    """A property the interop check asserts did not hold."""


class CaVerifier(AttestationVerifier):
    """Trusts exactly one attestation CA: the deployment's (``--attestation-ca``)."""

    def __init__(self, ca_der: bytes):
        super().__init__()
        self._ca_der = ca_der

    def ca_lookup(self, attestation_result, auth_data):
        return self._ca_der


#: CTAP 2.1 §12.1 credProtect levels by their WebAuthn names.
CRED_PROTECT_POLICIES = {
    1: "userVerificationOptional",
    2: "userVerificationOptionalWithCredentialIDList",
    3: "userVerificationRequired",
}
#: COSE algorithm identifiers offered with --algorithm.
ALGORITHMS = {"es256": -7, "eddsa": -8}


def check_counter(previous: int | None, current: int, what: str) -> None:
    if previous is not None and not current > previous:
        raise CheckFailed(
            f"signature counter did not increase: {what} returned {current}, "
            f"previous value {previous}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Register and authenticate with python-fido2 against the obr agent's "
        "SOCK_SEQPACKET CTAPHID socket; prints one JSON object per step on stdout.",
    )
    parser.add_argument("--hid-socket", required=True, metavar="PATH",
                        help="the agent's SOCK_SEQPACKET HID socket (obr-agent --hid-socket)")
    parser.add_argument("--rp-id", default="obr.test", help="relying party ID (default: %(default)s)")
    parser.add_argument("--rp-name", default="obr interop RP", help="relying party name")
    parser.add_argument("--origin", default="https://obr.test",
                        help="client origin; must be valid for --rp-id (default: %(default)s)")
    parser.add_argument("--user-name", default="obr-interop", help="user.name")
    parser.add_argument("--user-id-hex", metavar="HEX",
                        help="user.id as hex, 1 to 64 bytes (default: 16 random bytes)")
    parser.add_argument("--display-name", default="obr interop user", help="user.displayName")
    parser.add_argument("--resident-key", choices=["required", "preferred", "discouraged"],
                        default="discouraged",
                        help="authenticatorSelection.residentKey (default: %(default)s)")
    parser.add_argument("--uv", choices=["discouraged", "preferred", "required"],
                        default="discouraged",
                        help="userVerification for registration and authentication "
                        "(default: %(default)s)")
    parser.add_argument("--assertions", type=int, default=2, metavar="N",
                        help="authentications with allowCredentials=[the new credential] "
                        "(default: %(default)s)")
    parser.add_argument("--discoverable-login", action="store_true",
                        help="then authenticate once with an empty allowCredentials and check "
                        "the user handle (needs --resident-key required)")
    parser.add_argument("--attestation", choices=["none", "direct"], default="none",
                        help="attestation conveyance; direct verifies the statement "
                        "(default: %(default)s)")
    parser.add_argument("--attestation-ca", metavar="PEM",
                        help="the attestation CA certificate to trust (--attestation direct)")
    parser.add_argument("--expect-aaguid", metavar="UUID",
                        help="fail unless the credential's AAGUID is this one")
    parser.add_argument("--cred-protect", type=int, choices=[1, 2, 3], metavar="N",
                        help="credentialProtectionPolicy level 1-3 for the registration")
    parser.add_argument("--hmac-secret", action="store_true",
                        help="register with hmacCreateSecret and check hmacGetSecret outputs")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default=None,
                        help="the only algorithm the RP offers (default: python-fido2's list)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="bound on each CTAP operation and on the wait for any one report "
                        "(default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log to stderr; twice to dump every CTAPHID report")
    args = parser.parse_args(argv)
    if args.assertions < 0:
        parser.error("--assertions must be >= 0")
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    if args.attestation == "direct" and not args.attestation_ca:
        parser.error("--attestation direct needs --attestation-ca")
    if args.user_id_hex is None:
        args.user_id = os.urandom(16)
    else:
        try:
            args.user_id = bytes.fromhex(args.user_id_hex)
        except ValueError:
            parser.error("--user-id-hex is not hex")
        if not 1 <= len(args.user_id) <= 64:
            parser.error("--user-id-hex must be 1 to 64 bytes")
    return args


def run(args: argparse.Namespace, phase: list[str]) -> None:
    # A per-request timeout makes Fido2Client send CTAPHID_CANCEL when it expires; the
    # socket deadline is a little later so the key's answer to the cancel can arrive.
    timeout_ms = int(args.timeout * 1000)
    op_deadline = args.timeout + CANCEL_GRACE_S

    phase[0] = "connect"
    device, connection = open_device(args.hid_socket, args.timeout)
    try:
        emit(
            "connect",
            socket=args.hid_socket,
            ctaphid_version=device.version,
            device_version=list(device.device_version),
            capabilities=int(device.capabilities),
            cbor=bool(device.capabilities & CAPABILITY.CBOR),
            wink=bool(device.capabilities & CAPABILITY.WINK),
            nmsg=bool(device.capabilities & CAPABILITY.NMSG),
        )

        # Fido2Client silently falls back to CTAP1/U2F when CTAP2 setup fails (no CBOR
        # capability, a getInfo error, or non-canonical CBOR). Do the same setup here
        # first so such a failure is reported as what it is.
        phase[0] = "get_info"
        connection.arm(op_deadline)
        try:
            info = Ctap2(device).info
        except (ValueError, CtapError) as e:
            raise CheckFailed(f"CTAP2 unavailable, python-fido2 would fall back to U2F: {describe(e)}") from e
        emit(
            "info",
            versions=list(info.versions),
            aaguid=str(info.aaguid),
            options=dict(info.options),
            extensions=list(info.extensions),
            pin_uv_protocols=list(info.pin_uv_protocols),
            algorithms=[dict(a) for a in info.algorithms],
            max_msg_size=info.max_msg_size,
            transports=list(info.transports),
        )

        connection.arm(op_deadline)
        client = Fido2Client(
            device,
            client_data_collector=DefaultClientDataCollector(args.origin),
            user_interaction=NonInteractive(),
            extensions=[HmacSecretExtension(allow_hmac_secret=True), CredProtectExtension()],
        )
        verifier = None
        if args.attestation == "direct":
            with open(args.attestation_ca, "rb") as pem:
                ca = x509.load_pem_x509_certificate(pem.read())
            verifier = CaVerifier(ca.public_bytes(serialization.Encoding.DER))
        server = Fido2Server(
            PublicKeyCredentialRpEntity(name=args.rp_name, id=args.rp_id),
            attestation=args.attestation,
            verify_attestation=verifier,
        )
        server.timeout = timeout_ms
        if args.algorithm:
            server.allowed_algorithms = [
                PublicKeyCredentialParameters(type="public-key", alg=ALGORITHMS[args.algorithm])
            ]
        registration_extensions = {}
        if args.cred_protect:
            registration_extensions["credentialProtectionPolicy"] = (
                CRED_PROTECT_POLICIES[args.cred_protect]
            )
        if args.hmac_secret:
            registration_extensions["hmacCreateSecret"] = True
        uv = UserVerificationRequirement(args.uv)
        user = PublicKeyCredentialUserEntity(
            name=args.user_name, id=args.user_id, display_name=args.display_name
        )

        phase[0] = "register"
        creation, state = server.register_begin(
            user,
            resident_key_requirement=ResidentKeyRequirement(args.resident_key),
            user_verification=uv,
            extensions=registration_extensions or None,
        )
        connection.arm(op_deadline)
        registration = client.make_credential(creation.public_key)
        auth_data = server.register_complete(state, registration)
        credential = auth_data.credential_data
        if credential is None:
            raise CheckFailed("registration returned no attested credential data")
        if registration.raw_id != credential.credential_id:
            raise CheckFailed("rawId differs from the credential ID in authenticator data")
        if args.expect_aaguid and str(credential.aaguid) != args.expect_aaguid:
            raise CheckFailed(f"AAGUID {credential.aaguid} is not {args.expect_aaguid}")
        authenticator_extensions = dict(auth_data.extensions or {})
        if args.cred_protect and authenticator_extensions.get("credProtect") != args.cred_protect:
            raise CheckFailed(
                f"credProtect {authenticator_extensions.get('credProtect')!r} in authenticator "
                f"data, asked for {args.cred_protect}"
            )
        client_outputs = dict(registration.client_extension_results or {})
        if args.hmac_secret and client_outputs.get("hmacCreateSecret") is not True:
            raise CheckFailed(f"hmacCreateSecret not confirmed: {client_outputs!r}")
        emit(
            "register",
            credential_id=b64url(credential.credential_id),
            aaguid=str(credential.aaguid),
            alg=credential.public_key.get(3),
            fmt=registration.response.attestation_object.fmt,
            flags=flags_json(auth_data),
            sign_count=auth_data.counter,
            user_id=args.user_id.hex(),
            attestation_verified=verifier is not None,
            cred_protect=authenticator_extensions.get("credProtect"),
            hmac_create_secret=client_outputs.get("hmacCreateSecret"),
        )
        last_count = auth_data.counter

        for index in range(args.assertions):
            phase[0] = f"authenticate[{index}]"
            request, state = server.authenticate_begin([credential], user_verification=uv)
            connection.arm(op_deadline)
            selection = client.get_assertion(request.public_key)
            response = selection.get_response(0)
            server.authenticate_complete(state, [credential], response)
            assertion_data = response.response.authenticator_data
            check_counter(last_count, assertion_data.counter, f"assertion {index}")
            last_count = assertion_data.counter
            user_handle = response.response.user_handle
            if user_handle is not None and user_handle != args.user_id:
                raise CheckFailed(
                    f"user handle {user_handle.hex()} differs from user id {args.user_id.hex()}"
                )
            emit(
                "authenticate",
                index=index,
                credential_id=b64url(response.raw_id),
                sign_count=assertion_data.counter,
                user_verified=assertion_data.is_user_verified(),
                flags=flags_json(assertion_data),
                user_handle=None if user_handle is None else user_handle.hex(),
            )

        if args.hmac_secret:
            phase[0] = "hmac_secret"

            def hmac_output(salt: bytes, verification: UserVerificationRequirement) -> bytes:
                nonlocal last_count
                request, state = server.authenticate_begin(
                    [credential],
                    user_verification=verification,
                    extensions={"hmacGetSecret": {"salt1": salt}},
                )
                connection.arm(op_deadline)
                response = client.get_assertion(request.public_key).get_response(0)
                server.authenticate_complete(state, [credential], response)
                data = response.response.authenticator_data
                check_counter(last_count, data.counter, "hmac-secret assertion")
                last_count = data.counter
                output = dict(response.client_extension_results or {}).get("hmacGetSecret")
                if output is None:
                    raise CheckFailed("no hmacGetSecret output")
                output1 = output.output1 if hasattr(output, "output1") else output["output1"]
                # Client outputs may come JSON-ready: bytes as base64url text.
                return websafe_decode(output1) if isinstance(output1, str) else bytes(output1)

            salt_a, salt_b = b"\xa5" * 32, b"\x5a" * 32
            discouraged = UserVerificationRequirement.DISCOURAGED
            first = hmac_output(salt_a, discouraged)
            again = hmac_output(salt_a, discouraged)
            other = hmac_output(salt_b, discouraged)
            verified = hmac_output(salt_a, UserVerificationRequirement.REQUIRED)
            if first != again:
                raise CheckFailed("the same salt gave two different hmac-secret outputs")
            if first == other:
                raise CheckFailed("two salts gave the same hmac-secret output")
            if first == verified:
                raise CheckFailed("UV and non-UV hmac-secret outputs are the same")
            emit(
                "hmac_secret",
                output_len=len(first),
                same_salt_same_output=first == again,
                other_salt_other_output=first != other,
                uv_output_differs=first != verified,
            )

        if args.discoverable_login:
            phase[0] = "discoverable_login"
            request, state = server.authenticate_begin(None, user_verification=uv)
            connection.arm(op_deadline)
            selection = client.get_assertion(request.public_key)
            assertions = selection.get_assertions()
            match = [
                i
                for i, a in enumerate(assertions)
                if a.credential and a.credential.get("id") == credential.credential_id
            ]
            if not match:
                raise CheckFailed(
                    f"the registered credential is not among the {len(assertions)} "
                    "discoverable credential(s) returned"
                )
            response = selection.get_response(match[0])
            server.authenticate_complete(state, [credential], response)
            assertion_data = response.response.authenticator_data
            check_counter(last_count, assertion_data.counter, "discoverable assertion")
            user_handle = response.response.user_handle
            if user_handle != args.user_id:
                raise CheckFailed(
                    "discoverable assertion user handle "
                    f"{None if user_handle is None else user_handle.hex()} differs from "
                    f"user id {args.user_id.hex()}"
                )
            emit(
                "discoverable_login",
                credential_id=b64url(response.raw_id),
                credentials_returned=len(assertions),
                sign_count=assertion_data.counter,
                user_verified=assertion_data.is_user_verified(),
                flags=flags_json(assertion_data),
                user_handle=user_handle.hex(),
            )
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = {0: logging.WARNING, 1: logging.DEBUG}.get(args.verbose, LOG_LEVEL_TRAFFIC)
    logging.basicConfig(stream=sys.stderr, level=level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    phase = ["start"]
    try:
        run(args, phase)
    except BaseException as e:  # noqa: BLE001 - every failure becomes one JSON line
        if isinstance(e, SystemExit):
            raise
        log.debug("failure in %s", phase[0], exc_info=True)
        emit("error", phase=phase[0], exception=type(e).__name__, message=describe(e))
        return 1
    emit("done", ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
