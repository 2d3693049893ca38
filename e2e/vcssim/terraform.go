package vcssim

import (
	"fmt"
	"path"
)

// TerraformProject returns the files of a minimal Terraform project: one
// terraform_data resource, which is built into Terraform so plan and apply
// need no provider download and work offline.
func TerraformProject(resourceName string) map[string]string {
	return map[string]string{
		"main.tf": fmt.Sprintf(`resource "terraform_data" %q {
  input = %q
}

output %q {
  value = terraform_data.%s.output
}
`, resourceName, resourceName, resourceName, resourceName),
	}
}

// InDir prefixes every path in files with dir, to place a project such as
// TerraformProject's in a subdirectory of the repo.
func InDir(dir string, files map[string]string) map[string]string {
	out := make(map[string]string, len(files))
	for name, content := range files {
		out[path.Join(dir, name)] = content
	}
	return out
}
