variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-central-1"
}

variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string
  default     = "steward-example"
}

variable "admin_cidrs" {
  description = "Networks allowed to reach the REST API and SSH, e.g. [\"203.0.113.7/32\"]."
  type        = list(string)
}

variable "ssh_key_name" {
  description = "Existing EC2 key pair for SSH; null for none."
  type        = string
  default     = null
}

variable "agent_count" {
  description = "Agent VMs: 0 on the first apply, then N once an enrollment token exists."
  type        = number
  default     = 0
}

variable "controlplane_deb_url" {
  description = "Where the VMs download steward-controlplane_VERSION_amd64.deb from (HTTPS)."
  type        = string
}

variable "controlplane_deb_sha256" {
  description = "sha256sum of that .deb."
  type        = string
}

variable "agent_deb_url" {
  description = "Where the VMs download steward-agent_VERSION_amd64.deb from (HTTPS)."
  type        = string
}

variable "agent_deb_sha256" {
  description = "sha256sum of that .deb."
  type        = string
}

variable "enrollment_token" {
  description = "One-time token from `stewardctl enroll-tokens create --uses N`; \"\" while agent_count is 0."
  type        = string
  sensitive   = true
}
