# Inputs of the steward module. Every variable has a description; secrets
# (the enrollment token) have no default and are marked sensitive.

variable "name_prefix" {
  description = "Prefix of every resource name and Name tag (letters, digits and '-')."
  type        = string
  default     = "steward"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}$", var.name_prefix))
    error_message = "name_prefix must start with a lower-case letter and hold at most 31 of a-z, 0-9 and '-'."
  }
}

variable "tags" {
  description = "Extra tags for every resource that takes tags."
  type        = map(string)
  default     = {}
}

variable "vpc_cidr" {
  description = "Address range of the VPC the module creates."
  type        = string
  default     = "10.42.0.0/16"
}

variable "subnet_cidr" {
  description = "Address range of the one public subnet, inside vpc_cidr. The control plane gets its 10th address."
  type        = string
  default     = "10.42.1.0/24"
}

variable "availability_zone" {
  description = "Availability zone of the subnet; null picks the region's first available zone."
  type        = string
  default     = null
}

variable "admin_cidrs" {
  description = "Networks allowed to reach the REST API and SSH on every VM, e.g. [\"203.0.113.0/24\"]. Nothing else reaches them."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0))])
    error_message = "admin_cidrs must hold at least one CIDR block such as 203.0.113.0/24."
  }

  validation {
    condition     = !contains(var.admin_cidrs, "0.0.0.0/0")
    error_message = "admin_cidrs must not be 0.0.0.0/0: the REST API and SSH are for administrators only."
  }
}

variable "ssh_key_name" {
  description = "Name of an existing EC2 key pair for SSH (from admin_cidrs only); null for no key."
  type        = string
  default     = null
}

variable "ami_id" {
  description = "AMI for every VM; null uses the latest official Debian 12 (bookworm) amd64 AMI."
  type        = string
  default     = null
}

variable "controlplane_instance_type" {
  description = "EC2 instance type of the control-plane VM."
  type        = string
  default     = "t3.small"
}

variable "agent_instance_type" {
  description = "EC2 instance type of each agent VM."
  type        = string
  default     = "t3.micro"
}

variable "agent_count" {
  description = "How many agent VMs to create. Start with 0, create an enrollment token, then raise it (see the README)."
  type        = number
  default     = 2

  validation {
    condition     = var.agent_count >= 0 && var.agent_count <= 500 && floor(var.agent_count) == var.agent_count
    error_message = "agent_count must be a whole number from 0 to 500."
  }
}

variable "grpc_port" {
  description = "Port of the control plane's mTLS gRPC gateway; the only port agents can reach."
  type        = number
  default     = 7443
}

variable "rest_port" {
  description = "Port of the control plane's REST API (HTTPS), reachable from admin_cidrs only."
  type        = number
  default     = 8080
}

variable "controlplane_deb_url" {
  description = "HTTPS URL the control-plane VM downloads the steward-controlplane .deb from."
  type        = string
}

variable "controlplane_deb_sha256" {
  description = "SHA-256 of the steward-controlplane .deb; the VM refuses a download that does not match."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.controlplane_deb_sha256))
    error_message = "controlplane_deb_sha256 must be 64 lower-case hex digits (sha256sum output)."
  }
}

variable "agent_deb_url" {
  description = "HTTPS URL the agent VMs download the steward-agent .deb from."
  type        = string
}

variable "agent_deb_sha256" {
  description = "SHA-256 of the steward-agent .deb; a VM refuses a download that does not match."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.agent_deb_sha256))
    error_message = "agent_deb_sha256 must be 64 lower-case hex digits (sha256sum output)."
  }
}

variable "enrollment_token" {
  description = "One-time enrollment token (stwe_...) from `stewardctl enroll-tokens create --uses N`, used by every agent VM to enroll. Needed only when agent_count > 0; pass \"\" before that."
  type        = string
  sensitive   = true
}

variable "agent_extra_config" {
  description = "TOML appended to every agent's /etc/steward/agent.toml, e.g. more [[checks]] tables."
  type        = string
  default     = ""
}
