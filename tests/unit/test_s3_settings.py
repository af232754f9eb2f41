"""One reading of the S3 settings for every client: pyarrow filesystems and pyiceberg FileIO."""

from __future__ import annotations

from tidelake.s3_settings import S3Settings

ENV = {
    "TIDELAKE_S3_ENDPOINT": "http://127.0.0.1:9000",
    "AWS_ACCESS_KEY_ID": "k",
    "AWS_SECRET_ACCESS_KEY": "s",
    "AWS_REGION": "eu-west-3",
}


def test_the_environment_gives_the_same_settings_to_pyarrow_and_pyiceberg() -> None:
    settings = S3Settings.from_env(ENV)
    assert settings.filesystem().region == "eu-west-3"
    assert settings.iceberg_properties() == {
        "s3.region": "eu-west-3",
        "s3.path-style-access": "true",
        "s3.endpoint": "http://127.0.0.1:9000",
        "s3.access-key-id": "k",
        "s3.secret-access-key": "s",
    }


def test_an_explicit_endpoint_wins_and_the_region_defaults() -> None:
    settings = S3Settings.from_env({"TIDELAKE_S3_ENDPOINT": "http://a:1"}, endpoint="https://b:2")
    assert settings.endpoint == "https://b:2" and settings.region == "us-east-1"
    assert settings.access_key is None
