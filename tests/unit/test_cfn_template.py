"""The repository's one CloudFormation loader and its intrinsics (``devstack.template``), on small templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from devstack.template import NO_VALUE, Intrinsics, load_template

TEMPLATE = """\
Parameters:
  Stage:
    Type: String
    Default: prod
  Origins:
    Type: CommaDelimitedList
    Default: "http://a.test,http://b.test"
  KmsKeyArn:
    Type: String
    Default: ""
Mappings:
  Console:
    aws: { Host: console.aws.amazon.com }
    aws-cn: { Host: console.amazonaws.cn }
Conditions:
  HasKmsKey: !Not [!Equals [!Ref KmsKeyArn, ""]]
  IsProd: !Equals [!Ref Stage, prod]
  ProdWithoutKey: !And [!Condition IsProd, !Not [!Condition HasKmsKey]]
Resources:
  Bucket:
    Type: AWS::S3::Bucket
    Properties:
      Name: !Sub "images-${Stage}-${AWS::Region}"
      Arn: !GetAtt Bucket.Arn
      Literal: !Sub "${!NotAVariable}-${Stage}"
      Extra: !Sub
        - "${Name}.${Stage}"
        - Name: !Select [1, !Split [",", !Join [",", [x, !Ref Stage]]]]
      Key: !If [HasKmsKey, !Ref KmsKeyArn, !Ref AWS::NoValue]
      Keys: [a, !If [HasKmsKey, b, !Ref AWS::NoValue], c]
      Console: !FindInMap [Console, !Ref AWS::Partition, Host]
      FirstOrigin: !Select [0, !Ref Origins]
"""


@pytest.fixture
def template(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE, encoding="utf-8")
    return load_template(path)


def test_load_template_reads_short_tags_as_long_forms(template: dict[str, Any]) -> None:
    properties = template["Resources"]["Bucket"]["Properties"]

    assert properties["Arn"] == {"Fn::GetAtt": ["Bucket", "Arn"]}
    assert properties["Name"] == {"Fn::Sub": "images-${Stage}-${AWS::Region}"}
    assert template["Conditions"]["IsProd"] == {"Fn::Equals": [{"Ref": "Stage"}, "prod"]}
    assert template["Conditions"]["ProdWithoutKey"]["Fn::And"][0] == {"Condition": "IsProd"}


def test_load_template_refuses_a_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")

    with pytest.raises(ValueError, match="not a CloudFormation template"):
        load_template(path)


def test_load_template_is_safe(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("a: !!python/object/apply:os.system ['true']\n", encoding="utf-8")

    with pytest.raises(Exception, match="python/object"):
        load_template(path)


def test_intrinsics_with_the_defaults(template: dict[str, Any]) -> None:
    resolved = Intrinsics(template).resolve(template["Resources"]["Bucket"]["Properties"])

    assert resolved["Name"] == "images-prod-us-east-1"
    assert resolved["Arn"] == "Bucket.Arn"
    assert resolved["Literal"] == "${NotAVariable}-prod"
    assert resolved["Extra"] == "prod.prod"
    assert "Key" not in resolved  # AWS::NoValue drops the property
    assert resolved["Keys"] == ["a", "c"]
    assert resolved["Console"] == "console.aws.amazon.com"
    assert resolved["FirstOrigin"] == "http://a.test"


def test_intrinsics_with_overridden_parameters(template: dict[str, Any]) -> None:
    intrinsics = Intrinsics(template, {"Stage": "dev", "KmsKeyArn": "arn:aws:kms:us-east-1:1:key/k"})

    resolved = intrinsics.resolve(template["Resources"]["Bucket"]["Properties"])

    assert resolved["Name"] == "images-dev-us-east-1"
    assert resolved["Key"] == "arn:aws:kms:us-east-1:1:key/k"
    assert resolved["Keys"] == ["a", "b", "c"]
    assert intrinsics.condition("IsProd") is False
    assert intrinsics.condition("ProdWithoutKey") is False


def test_intrinsics_errors_name_what_is_missing(template: dict[str, Any]) -> None:
    intrinsics = Intrinsics(template)

    assert intrinsics.resolve({"Ref": "AWS::NoValue"}) is NO_VALUE
    with pytest.raises(ValueError, match="unknown condition 'Nope'"):
        intrinsics.condition("Nope")
    with pytest.raises(ValueError, match=r"Console\.aws\.Port"):
        intrinsics.resolve({"Fn::FindInMap": ["Console", "aws", "Port"]})
