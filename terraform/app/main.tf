# Demo module for runbooks/terraform-demo.md: only the built-in terraform_data
# resource, so `terraform init` downloads nothing and the demo runs offline.
variable "app_version" {
  type        = string
  description = "release of the app this environment runs"
}

variable "replicas" {
  type    = number
  default = 2
}

resource "terraform_data" "app" {
  input = {
    version  = var.app_version
    replicas = var.replicas
  }
}

output "version" {
  value = terraform_data.app.output.version
}

output "replicas" {
  value = terraform_data.app.output.replicas
}
