"""Secrets Manager calls for scripts/demo.sh, made with boto3 against the local emulator.

create NAME VALUE     create a secret
rotate NAME VALUE     rotate it the way a rotation Lambda does: PutSecretValue as AWSPENDING
                      (createSecret), then move AWSCURRENT to the new version (finishSecret)
"""
import sys

import boto3

sm = boto3.client("secretsmanager")
cmd, name, value = sys.argv[1:4]
if cmd == "create":
    sm.create_secret(Name=name, SecretString=value)
elif cmd == "rotate":
    old = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["VersionId"]
    new = sm.put_secret_value(SecretId=name, SecretString=value, VersionStages=["AWSPENDING"])["VersionId"]
    sm.update_secret_version_stage(
        SecretId=name, VersionStage="AWSCURRENT", MoveToVersionId=new, RemoveFromVersionId=old
    )
    print(f"rotated {name}: AWSCURRENT {old} -> {new}")
else:
    sys.exit(__doc__)
