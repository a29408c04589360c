"""The one account localcloud serves: its id and the access key of its root (not IAM-checked)."""

ACCOUNT_ID = "123456789012"
ACCESS_KEY = "localcloud"
SECRET_KEY = "localcloud"
