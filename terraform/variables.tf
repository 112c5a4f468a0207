variable "name" {
  description = "Prefix of every resource name (table, bucket, queues, function, API). Lower case letters, digits and dashes; never `_`, which ends the name in queue names (so no other deployment's queues match this one's IAM patterns)."
  type        = string
  default     = "jewel"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: 2 to 31 lower-case letters, digits or dashes, starting with a letter."
  }
}

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-west-1"
}

variable "bucket_name" {
  description = "Name of the block bucket (globally unique); empty means <name>-blocks-<account id>."
  type        = string
  default     = ""
}

variable "lambda_zip" {
  description = "The function package built by `make lambda`."
  type        = string
  default     = "../target/lambda-build/lambda/bootstrap/bootstrap.zip"
}

variable "lambda_architecture" {
  description = "CPU of the function; must match the package (`make lambda` builds x86_64; `make lambda LAMBDA_ARCH=arm64` for Graviton, 20% cheaper per GB-second)."
  type        = string
  default     = "x86_64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda_architecture)
    error_message = "lambda_architecture: x86_64 or arm64."
  }
}

variable "lambda_memory_mb" {
  description = "Lambda memory. The service is I/O bound (DynamoDB/S3/SQS calls); 256 MB gives enough CPU for JSON and signing."
  type        = number
  default     = 256
}

# No reserved concurrency by default: a new account's concurrency quota is 10 and Lambda keeps
# 10 unreserved, so any reservation makes `terraform apply` fail there. The API's throttling
# (throttle_rate, throttle_burst) still bounds the invocations a runaway client can cause;
# after raising the quota (docs/DEPLOY.md) set this to cap them harder.
variable "lambda_concurrency" {
  description = "Reserved concurrency (a ceiling on simultaneous invocations), or null for none. Needs an account concurrency quota of at least this plus 10: ask for more in Service Quotas first (docs/DEPLOY.md)."
  type        = number
  default     = null
  nullable    = true
}

variable "log_retention_days" {
  description = "Change-log retention (DynamoDB TTL). A device offline longer re-lists instead of catching up."
  type        = number
  default     = 30
}

variable "maintenance_schedule" {
  description = "When EventBridge starts the maintenance function (trash and version expiry, block garbage collection). A block unreferenced for an hour is condemned by one run and deleted by the next, so garbage goes within two periods. Each run reads every user's node items and lists their blocks, so hourly runs would cost more than the garbage they free (docs/COST.md)."
  type        = string
  default     = "rate(1 day)"
}

variable "maintenance_memory_mb" {
  description = "Memory of the maintenance function: it holds one user's block hashes (~100 bytes each) at a time, a million blocks in about 200 MB."
  type        = number
  default     = 512
}

variable "trash_retention_days" {
  description = "How long S3 keeps a block after the garbage collector deleted it (noncurrent version), as a safety net."
  type        = number
  default     = 30
}

variable "cloudwatch_log_days" {
  description = "Retention of the function's and the API's logs."
  type        = number
  default     = 30
}

# Throttling is per stage, for all clients together: an HTTP API has no per-client rule
# (usage plans and API keys are REST-API only, and AWS WAF does not attach to an HTTP API).
# One client can therefore use up the whole rate and slow everyone down, but never run up
# more invocations than this rate allows (nor, when `lambda_concurrency` is set, more at
# once). A per-client limit needs a CloudFront distribution with a WAF rate-based rule in
# front (not part of this deployment); see docs/SECURITY.md.
variable "throttle_rate" {
  description = "API requests per second allowed (steady state), all clients together (HTTP APIs have no per-client throttling)."
  type        = number
  default     = 50
}

variable "throttle_burst" {
  description = "API burst allowance, all clients together."
  type        = number
  default     = 100
}

variable "monthly_budget_usd" {
  description = "Monthly cost budget in USD for the account (terraform/budget.tf): alerts at 80% spent and when the forecast exceeds it. docs/COST.md estimates about $0.40 per user-month."
  type        = number
  default     = 10
  validation {
    condition     = var.monthly_budget_usd > 0
    error_message = "monthly_budget_usd: a positive amount of USD."
  }
}

variable "budget_alert_emails" {
  description = "Email addresses that receive the budget alerts; empty: the budget is tracked but alerts no one."
  type        = list(string)
  default     = []
}

variable "xray_tracing" {
  description = "X-Ray active tracing of the function. Lambda traces 1 request a second plus 5% (not configurable), which at a few requests a second is every request: about $13 per million changes, a third of the per-change cost (docs/COST.md). false turns it off."
  type        = bool
  default     = true
}
